"""Every notebook in notebooks/ runs top to bottom in a real kernel on smollm2, offline.

Only cells tagged `raises-exception` (the nbclient / nbsphinx convention) may fail, and those must.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The project's own notebooks, by name: a user's scratch notebook in notebooks/ (JupyterLab opens there) is not ours to run.
PROJECT_NOTEBOOKS = ("analysis.ipynb", "quickstart.ipynb", "teaching.ipynb")
NOTEBOOKS = [ROOT / "notebooks" / name for name in PROJECT_NOTEBOOKS]
CELL_TIMEOUT_S = 120


def _source(cell: Any) -> str:
    return cell.source if isinstance(cell.source, str) else "".join(cell.source)


def _expects_error(cell: Any) -> bool:
    return "raises-exception" in cell.get("metadata", {}).get("tags", [])


def _errored(cell: Any) -> bool:
    return any(o.output_type == "error" for o in cell.outputs)


def _execute(path: Path) -> Any:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    nb = nbformat.read(path, as_version=4)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # The kernel imports this checkout and finds smollm2 already converted in the test session's cache.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, startup_timeout=120, kernel_name="python3",
                                     allow_errors=True, resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)
    return nb


@pytest.fixture(scope="module")
def executed(smollm2_int8: Path) -> Any:
    """Run each notebook once per test module (smollm2 is converted first, outside any cell's timeout)."""
    done: dict[Path, Any] = {}

    def get(path: Path) -> Any:
        if path not in done:
            done[path] = _execute(path)
        return done[path]

    return get


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_cleanly(path: Path, executed: Any) -> None:
    nb = executed(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [
        f"cell {nb.cells.index(c)}: {o.get('ename')}: {o.get('evalue')}"
        for c in code if not _expects_error(c) for o in c.outputs if o.output_type == "error"
    ]
    assert not errors, "\n".join(errors)
    # A cell that fails on purpose (e.g. to show %llama explain) is tagged, and must really fail.
    quiet = [nb.cells.index(c) for c in code if _expects_error(c) and not _errored(c)]
    assert not quiet, f"cells tagged raises-exception that did not raise: {quiet}"
    assert all(c.get("execution_count") for c in code if _source(c).strip()), "a code cell did not run"
    for cell in code:
        if _source(cell).lstrip().startswith("%%llama") and not _expects_error(cell):
            shown = [o for o in cell.outputs if o.output_type in ("display_data", "execute_result")
                     and "text/html" in o.get("data", {}) and "text/markdown" not in o.get("data", {})]
            assert shown, f"%%llama cell {nb.cells.index(cell)} showed no reply"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_on_smollm2_not_the_random_demo_model(path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    code = "\n".join(_source(c) for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert "load smollm2" in code or '"smollm2"' in code
    assert "demo" not in code


def test_analysis_notebook_adds_columns_to_the_table(executed: Any) -> None:
    path = ROOT / "notebooks" / "analysis.ipynb"
    if not path.exists():
        pytest.skip("no analysis notebook")
    nb = executed(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [c for c in code if _errored(c) and not _expects_error(c)]
    # The notebook asserts on its own table; make sure those checks are there and ran.
    checks = [c for c in code if "assert list(reviews.columns)" in _source(c)]
    assert checks and all(c.get("execution_count") for c in checks)
    tables = [o for c in code if "llama.map(" in _source(c) for o in c.outputs if o.output_type == "execute_result"]
    assert tables and "text/html" in tables[0]["data"]


def test_the_project_notebooks_are_the_ones_git_tracks() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "notebooks/*.ipynb"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert sorted(Path(line).name for line in listed.stdout.split()) == sorted(PROJECT_NOTEBOOKS)


def test_a_scratch_notebook_in_the_folder_is_not_run() -> None:
    scratch = ROOT / "notebooks" / f"Untitled-scratch-{os.getpid()}.ipynb"
    cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": "1 / 0"}
    scratch.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    try:
        collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                    str(Path(__file__))], cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        scratch.unlink()
    assert collected.returncode == 0, collected.stdout[-2000:]
    assert "test_notebook_runs_cleanly[quickstart.ipynb]" in collected.stdout and scratch.name not in collected.stdout
