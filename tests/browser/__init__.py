"""Real-browser tests: a JupyterLab server driven by Debian's chromium via Playwright."""
