"""The binder set-up installs in a fresh virtual environment and the quickstart runs there, offline, on smollm2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RUN_QUICKSTART = """
import sys, nbformat, nbclient
nb = nbformat.read(sys.argv[1], as_version=4)
nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
llama_cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("%%llama")]
shown = [c for c in llama_cells if any("text/html" in o.get("data", {}) for o in c.outputs)]
print("cells", len(llama_cells), "shown", len(shown), "errors", len(errors))
"""


@pytest.mark.slow  # a fresh venv and a pip install: a minute and a half here
@pytest.mark.skipif(os.environ.get("CT2_MAGICS_SKIP_BINDER") == "1", reason="CT2_MAGICS_SKIP_BINDER=1")
def test_binder_requirements_install_in_a_fresh_venv_and_quickstart_runs(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "CT2_MAGICS_CACHE": str(tmp_path / "cache")}
    env.pop("PYTHONPATH", None)
    pip = [str(py), "-m", "pip", "install", "-q", "--progress-bar", "off"]
    subprocess.run([*pip, "-r", str(ROOT / "binder" / "requirements.txt"), "nbclient", "ipykernel"], check=True, env=env)
    subprocess.run(["bash", str(ROOT / "binder" / "postBuild")], check=True, env=env, cwd=ROOT)
    converted = [p for p in (tmp_path / "cache" / "converted").iterdir() if p.name.startswith("SmolLM2-135M-Instruct-int8-")]
    assert len(converted) == 1 and (converted[0] / "model.bin").is_file()
    out = subprocess.run([str(py), "-c", RUN_QUICKSTART, str(ROOT / "notebooks" / "quickstart.ipynb"), str(tmp_path)],
                         check=True, env=env, capture_output=True, text=True, cwd=tmp_path).stdout
    counts = dict(zip(out.split()[::2], map(int, out.split()[1::2])))
    assert counts["errors"] == 0 and counts["cells"] >= 3 and counts["shown"] == counts["cells"]
