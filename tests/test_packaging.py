"""The repository as a new user gets it: packaging, environment files, no data in git."""

import ast
import importlib
import json
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pyproject = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    conda = set()
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("dependencies:", 1)[1].splitlines():
        m = re.match(r"^  - ([A-Za-z0-9_.-]+)", line)
        if m and m.group(1) not in ("python", "pip"):
            conda.add(CONDA_NAMES.get(_name(m.group(1)), _name(m.group(1))))
    assert conda == pyproject, f"only in environment.yml: {conda - pyproject}; only in pyproject: {pyproject - conda}"
    assert '-e ".[dev]"' in (ROOT / "environment.yml").read_text()


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    except (FileNotFoundError, subprocess.CalledProcessError):
        pytest.fail("these checks need the git checkout (git ls-files failed)")
    return [p for p in out.stdout.decode().split("\0") if p]


def test_no_data_checkpoints_or_caches_are_tracked():
    # CT-ICH and RSNA are restricted data: no scan, mask, DICOM, checkpoint or cache may be in git.
    forbidden = re.compile(r"\.(nii|nii\.gz|dcm|npy|npz|pt|pth|ckpt|h5|pkl)$", re.IGNORECASE)
    bad = [p for p in _tracked() if forbidden.search(p)]
    assert bad == []
    data_files = [p for p in _tracked() if p.startswith("data/") and p != "data/README.md"]
    assert data_files == []


def test_committed_notebooks_have_no_outputs():
    # Outputs rendered from restricted data would redistribute it; executed copies go to runs/.
    notebooks = [p for p in _tracked() if p.endswith(".ipynb")]
    for path in notebooks:
        nb = json.loads((ROOT / path).read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell.get("outputs") == [] and cell.get("execution_count") is None, path


def test_notebooks_follow_the_fixed_opening():
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(path.read_text())
        cells = nb["cells"]
        assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# "), path
        params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(params) == 1, f"{path.name}: needs exactly one papermill parameters cell"
        src = "".join(params[0]["source"])
        data = "RSNA_DIR" if path.name.startswith("06") else "DATA_DIR"
        for name in (data, "FIGURES_DIR", "RUNS_DIR", "SMOKE"):
            assert re.search(rf"^{name}\s*=", src, re.M), f"{path.name}: parameter {name} missing"
        assert nb["metadata"]["kernelspec"]["name"] == "python3", path


def test_notebook_cells_hold_no_functions_and_import_ichlib_only_from_the_top():
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        code = [("".join(c["source"])) for c in json.loads(path.read_text())["cells"]
                if c["cell_type"] == "code"]
        for src in code:
            assert not re.search(r"^\s*(def|class) ", src, re.M), f"{path.name}: a function in a cell:\n{src}"
            deep = re.findall(r"^\s*(?:from|import) ichlib\.\S+", src, re.M)
            assert not deep, f"{path.name} imports ichlib submodules: {deep}"


def test_console_script_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "ichlib", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "check" in out.stdout and "synth" in out.stdout


def test_gitignore_keeps_generated_files_out():
    ignore = (ROOT / ".gitignore").read_text()
    for pattern in ("data/*", "!data/README.md", "runs/", "figures/*", ".venv/", "*.pt", "*.nii"):
        assert pattern in ignore.splitlines(), pattern


PACKAGES = ["ichlib", "ichlib.io", "ichlib.io.dicom", "ichlib.preprocess", "ichlib.training",
            "ichlib.explain", "ichlib.viz", "ichlib.synthetic"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="no attribute"):
        module.no_such_name  # noqa: B018


def _init_imports(package: str) -> tuple[set[str], set[str]]:
    """The ichlib names a package's ``__init__`` imports at run time, and under ``TYPE_CHECKING``."""
    tree = ast.parse((ROOT / package.replace(".", "/") / "__init__.py").read_text())

    def names(nodes: list[ast.stmt]) -> set[str]:
        return {a.asname or a.name for n in nodes if isinstance(n, ast.ImportFrom)
                and (n.module or "").startswith("ichlib") for a in n.names}

    typing_only = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]
    return names(tree.body), names([s for n in typing_only for s in n.body])


@pytest.mark.parametrize("package", PACKAGES)
def test_each_init_imports_exactly_its_public_names(package):
    # Plain `from ichlib.x import a, b` lines, and an __all__ of those names: what is imported on
    # first use is imported under TYPE_CHECKING too (for type checkers) and listed in one table.
    module = importlib.import_module(package)
    eager, typing_only = _init_imports(package)
    on_first_use = set(getattr(module, "_MODULE_OF", {}))
    submodules = set(getattr(module, "_SUBMODULES", ()))
    assert typing_only == on_first_use | submodules
    assert not eager & on_first_use
    assert set(module.__all__) == (eager | on_first_use) - {"TYPE_CHECKING"}
    assert len(module.__all__) == len(set(module.__all__))
    for name in on_first_use:  # the table points at the module the TYPE_CHECKING import names
        assert getattr(module, name) is getattr(importlib.import_module(module._MODULE_OF[name]), name)




@pytest.mark.parametrize("package", PACKAGES)
def test_no_public_name_is_also_a_submodule(package):
    # `from ichlib.training.fit import fit` in training/__init__ would make ichlib.training.fit
    # the function, and `import ichlib.training.fit` could not reach the module's names.
    module = importlib.import_module(package)
    submodules = {info.name for info in pkgutil.iter_modules(module.__path__)}
    shadows = {(package, n) for n in module.__all__ if n in submodules}
    assert not shadows


def test_submodules_resolve_after_import_ichlib():
    code = ("import ichlib; print(ichlib.course.setup.__name__, ichlib.io.largest_lesion_slice.__name__, "
            "ichlib.preprocess.BLOOD_HU, ichlib.fit.__module__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["setup", "largest_lesion_slice", "(50.0,", "90.0)", "ichlib.training.fit"], \
        done.stderr


def test_the_notebook_names_are_read_from_code_cells(tmp_path):
    from tests.notebook_names import Use, notebook_uses

    cells = [{"cell_type": "markdown", "source": ["ichlib.not_code"]},
             {"cell_type": "code", "source": ["%matplotlib inline\n", "import ichlib\n",
                                              "x = ichlib.io.largest_lesion_slice(data, ichlib.LABELS[1])\n",
                                              "from ichlib.io.rsna import DuplicateLabelWarning"]}]
    (tmp_path / "01_a.ipynb").write_text(json.dumps({"cells": cells}))
    assert notebook_uses(tmp_path) == [
        Use("01_a.ipynb", "from ichlib.io.rsna import DuplicateLabelWarning"),
        Use("01_a.ipynb", "ichlib.LABELS"), Use("01_a.ipynb", "ichlib.io.largest_lesion_slice")]


def test_the_notebooks_names_resolve_for_mypy():
    from tests.notebook_names import doc_uses, notebook_uses, unresolved, uses_in_code

    uses = notebook_uses()
    assert len({u.source for u in uses}) == len(list((ROOT / "notebooks").glob("*.ipynb")))
    errors, _ = unresolved(uses + doc_uses())
    assert errors == []
    # and the check can fail: names the package does not export are errors, by notebook
    bad = sorted(uses_in_code("import ichlib\nichlib.no_such(1)\nichlib.io.no_such\n"
                              "from ichlib.io import no_such\nichlib.fit(1)", "x.ipynb"))
    errors, _ = unresolved(bad)
    assert len(errors) == 3 and all(e.startswith("x.ipynb: ") for e in errors), errors


def test_importing_ichlib_loads_no_heavy_library():
    code = ("import sys, ichlib; heavy = [m for m in ('torch', 'pandas', 'pydicom', 'sklearn', "
            "'matplotlib') if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_makefile_phantom_size_matches_the_notebooks_default():
    from ichlib.course import COURSE_PATIENTS

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    match = re.search(r"^SYNTH_PATIENTS \?= (\d+)$", makefile, flags=re.MULTILINE)
    assert match and int(match.group(1)) == COURSE_PATIENTS
