"""The package's shape: no import cycles, layers that point one way, short functions."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ichlib"
#: Functions allowed over the length limit because they are declarative (a table or a parser).
DECLARATIVE = {"build_parser"}
MAX_FUNCTION_LINES = 80


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--config", "pyproject.toml", "--no-cache"],
                          cwd=cwd, env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def test_no_import_cycles():
    graph = grimp.build_graph("ichlib", cache_dir=None)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if imported.startswith("ichlib") and graph.chain_exists(importer=imported, imported=importer):
                back = graph.find_shortest_chain(importer=imported, imported=importer)
                cycles.append(f"{importer} -> {' -> '.join(back)}")
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_layer_contracts_hold():
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_the_layer_contract_catches_io_importing_training(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "ichlib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    volume = tmp_path / "ichlib" / "io" / "volume.py"
    volume.write_text(volume.read_text() + "\nimport ichlib.training  # a layer violation\n")
    done = _lint_imports(tmp_path)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout and "ichlib.io.volume -> ichlib.training" in done.stdout


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_are_short_and_import_ichlib_only_at_the_top(path):
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    long = [f"{f.name} ({f.end_lineno - f.lineno + 1} lines)" for f in _functions(tree)
            if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES and f.name not in DECLARATIVE]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"
    inner = [(sub.lineno, sub.module) for f in _functions(tree) for sub in ast.walk(f)
             if isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith("ichlib")]
    if path.name == "cli.py":  # the command line imports per subcommand, for its start-up time
        unmarked = [n for n, _ in inner if "start-up" not in lines[n - 1]]
        assert not unmarked, f"cli.py imports without a start-up comment on lines {unmarked}"
    else:
        assert not inner, f"{path.name}: imports of ichlib inside functions: {inner}"
