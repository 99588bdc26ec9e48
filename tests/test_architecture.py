"""The shape of the package, kept: layers one way (pyproject.toml's import-linter contract, run by tests/run.sh),
no import circle at any depth, and modules small enough to read in one sitting."""

from __future__ import annotations

from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ct2_magics"
MAX_LINES = 300


def test_no_module_is_over_300_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these along their concerns: {long}"


def test_no_import_circle_at_any_depth():
    grimp = pytest.importorskip("grimp")  # import-linter's graph builder (the test extra installs it)
    # Every import counts: at module level, inside functions and under TYPE_CHECKING.
    graph = grimp.build_graph("ct2_magics", cache_dir=None)
    modules = sorted(m for m in graph.modules if m != "ct2_magics")
    edges = {m: {n for n in graph.find_modules_directly_imported_by(m) if n in graph.modules and n != "ct2_magics"}
             for m in modules}
    circles = []
    for a in modules:
        for b in edges[a]:
            if a < b and graph.find_shortest_chain(importer=b, imported=a) is not None:
                circles.append(f"{a} <-> {b}")
    assert not circles, "import circles: " + "; ".join(circles)


def test_the_layer_contract_holds():
    pytest.importorskip("importlinter")
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(PACKAGE.parent / "pyproject.toml")) == 0  # lint-imports printed what broke
