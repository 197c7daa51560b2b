import re
import warnings

import nbformat
import pytest

from ichlib.course import (
    SMOKE_SIZES,
    course_paths,
    ensure_synthetic,
    repo_root,
    settings_table,
    setup,
    setup_rsna,
    smoke_sizes,
)
from ichlib.errors import ConfigError, DataWarning
from ichlib.io.dicom.series import load_dicom_series
from ichlib.io.folder import is_synthetic
from ichlib.io.rsna import read_rsna


def test_defaults_are_under_the_repo_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = repo_root()
    assert (root / "pyproject.toml").exists()
    p = course_paths(None, tmp_path / "f", tmp_path / "r")
    assert p.data == root / "data" / "synthetic"
    assert p.figures.is_dir() and p.runs.is_dir() and p.cache == p.runs / "cache"


def test_ensure_synthetic_generates_once(tmp_path):
    target = tmp_path / "synth"
    ensure_synthetic(target, n_patients=2, size=32, seed=0)
    assert is_synthetic(target)
    stamp = (target / "synthetic.json").stat().st_mtime_ns
    ensure_synthetic(target, n_patients=2, size=32, seed=0)
    assert (target / "synthetic.json").stat().st_mtime_ns == stamp


def test_real_folders_are_not_synthetic(small_ct_ich):
    assert not is_synthetic(small_ct_ich)


def test_smoke_sizes_cap_only_in_smoke_mode():
    sizes = {"IMG_SIZE": 256, "N_BOOT": 20, "DELETION_PATIENTS": None}
    assert smoke_sizes(sizes, smoke=False) == sizes
    capped = smoke_sizes(sizes, smoke=True)
    assert capped == {"IMG_SIZE": SMOKE_SIZES["IMG_SIZE"], "N_BOOT": 20,  # already below its cap
                      "DELETION_PATIENTS": SMOKE_SIZES["DELETION_PATIENTS"]}  # None ("all") -> cap
    assert list(capped) == list(sizes)  # the order a notebook unpacks them in
    assert smoke_sizes({"IMG_SIZE": 256}, smoke=True, limits={"IMG_SIZE": 48}) == {"IMG_SIZE": 48}


def test_smoke_sizes_refuse_a_size_without_a_cap():
    with pytest.raises(ConfigError, match="no smoke size for NEW_SIZE"):
        smoke_sizes({"NEW_SIZE": 10}, smoke=True)
    assert smoke_sizes({"NEW_SIZE": 10}, smoke=False) == {"NEW_SIZE": 10}


def test_setup_gives_the_sizes_back_and_the_old_call_still_works(small_ct_ich, tmp_path):
    full = setup(small_ct_ich, tmp_path / "f", tmp_path / "r", False, sizes={"IMG_SIZE": 256})
    smoke = setup(small_ct_ich, tmp_path / "f", tmp_path / "r", True, sizes={"IMG_SIZE": 256})
    assert full.sizes == {"IMG_SIZE": 256} and smoke.sizes == {"IMG_SIZE": 32}
    old = setup(small_ct_ich, tmp_path / "f", tmp_path / "r", True)  # notebooks 04/05 until converted
    assert old.smoke and old.sizes == {} and not old.synthetic


def test_settings_are_a_short_table(small_ct_ich, tmp_path):
    table = settings_table({"windows": ["brain", "bone"], "learning rate": 0.001, "S": 16})
    assert table.index.name == "setting" and list(table.columns) == ["value"]
    assert table["value"].tolist() == ["brain, bone", "0.001", "16"]
    course = setup(small_ct_ich, tmp_path / "f", tmp_path / "r", True, sizes={"MAX_PATIENTS": 40})
    shown = course.settings({"patients measured": course.sizes["MAX_PATIENTS"]})
    assert shown.index.tolist() == ["data", "patients measured", "smoke mode"]
    assert shown.loc["patients measured", "value"] == "4"
    assert shown.loc["smoke mode", "value"] == "sizes capped: MAX_PATIENTS 4"


def test_setup_rsna_writes_a_smoke_sized_phantom(tmp_path):
    course = setup_rsna(None, tmp_path / "f", tmp_path / "r", True,
                        sizes={"N_PATIENTS": 6, "SIZE": 256, "EPOCHS": 2})
    assert course.sizes == {"N_PATIENTS": 3, "SIZE": 64, "EPOCHS": 1}
    assert course.synthetic and course.paths.data == (tmp_path / "r" / "synthetic_rsna").resolve()
    data = read_rsna(course.paths.data)
    assert data.patients["patient_id_dicom"].nunique() == SMOKE_SIZES["N_PATIENTS"]
    assert load_dicom_series(data.scans[data.patient_ids[0]]).hu.shape[1:] == (64, 64)
    two = setup_rsna(None, tmp_path / "f", tmp_path / "r2", True, sizes={"N_PATIENTS": 2})
    assert read_rsna(two.paths.data).patients["patient_id_dicom"].nunique() == 2


def test_setup_shows_warnings_as_one_readable_line(small_ct_ich, tmp_path, monkeypatch):
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored afterwards
    setup(small_ct_ich, tmp_path / "f", tmp_path / "r")
    text = warnings.formatwarning(DataWarning("scan.nii: NaN spacing"), DataWarning, "/x/io/volume.py", 12,
                                  "    raise_it()")
    assert text == "warning (DataWarning): scan.nii: NaN spacing\n"


def _notebook_cells(number: str) -> tuple[str, list]:
    path = next((repo_root() / "notebooks").glob(f"{number}_*.ipynb"))
    return path.name, nbformat.read(path, as_version=4).cells


@pytest.mark.parametrize("number", ["01", "02", "03", "04", "05", "06"])
def test_course_notebooks_take_their_sizes_from_setup(number):
    name, cells = _notebook_cells(number)
    code = "\n".join(c.source for c in cells if c.cell_type == "code")
    assert "if SMOKE" not in code and "sizes=" in code, name
    assert all(not c.get("outputs") for c in cells if c.cell_type == "code"), f"{name} has outputs"


#: The notebooks that end with exercises (04 joins when it has them).
WITH_EXERCISES = ("01", "02", "03", "04", "05", "06")


@pytest.mark.parametrize("number", WITH_EXERCISES)
def test_course_notebooks_end_with_two_or_three_exercises(number):
    name, cells = _notebook_cells(number)
    last = cells[-1]
    assert last.cell_type == "markdown" and "Try this" in last.source.splitlines()[0], name
    exercises = re.findall(r"^\d\. ", last.source, flags=re.MULTILINE)
    assert 2 <= len(exercises) <= 3, f"{name}: {len(exercises)} exercises"
