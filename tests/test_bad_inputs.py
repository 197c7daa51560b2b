"""A catalogue of bad inputs: each is refused with a DataError that names the file and the problem.

Every case is built in ``tmp_path``; no binary file is committed. The catalogue has three
parts: scan files (:func:`ichlib.io.load.load_volume`), label tables and folder layouts
(:func:`ichlib.io.ctich.read_ct_ich`), and the commands that meet them (``ichlib check``,
training with and without ``skip_bad``, ``ichlib predict``). After every refusal the
folder holds no temporary file.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import cifti2

import ichlib.io.nifti
from ichlib.cli import main
from ichlib.errors import DataError
from ichlib.io.check import check_dataset
from ichlib.io.ctich import LABEL_CSV, read_ct_ich
from ichlib.io.load import load_volume
from ichlib.io.nifti import save_volume
from ichlib.labels import LABELS
from ichlib.training.config import TrainConfig
from ichlib.training.fit import fit
from tests.conftest import labels_with, tiny_train_config, write_ct_ich


def leftovers(folder: Path) -> list[Path]:
    """Temporary files (``atomic_path`` names them ``.NAME.XXXX.tmp...``) under ``folder``."""
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def good_hu(n: int = 4, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(30, 10, (n, size, size)).astype(np.float32)


def nifti(path: Path, data: np.ndarray, cls=nib.Nifti1Image) -> Path:
    nib.save(cls(data, np.eye(4)), path)
    return path


# --- scan files -------------------------------------------------------------------------

def _empty(tmp: Path) -> Path:
    path = tmp / "empty.nii"
    path.write_bytes(b"")
    return path


def _truncated(tmp: Path) -> Path:
    path = save_volume(tmp / "truncated.nii", good_hu())
    path.write_bytes(path.read_bytes()[:-300])
    return path


def _shorter_than_header(tmp: Path) -> Path:
    path = save_volume(tmp / "stub.nii", good_hu())
    path.write_bytes(path.read_bytes()[:200])
    return path


def _random_bytes(tmp: Path) -> Path:
    path = tmp / "random.nii"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    return path


def _gzip_not_nifti(tmp: Path) -> Path:
    path = tmp / "text.nii.gz"
    path.write_bytes(gzip.compress(b"PatientNumber,SliceNumber\n" * 50))
    return path


def _corrupt_gzip(tmp: Path) -> Path:
    path = tmp / "corrupt.nii.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + np.random.default_rng(2).bytes(1000))
    return path


def _image_2d(tmp: Path) -> Path:
    return nifti(tmp / "flat.nii", good_hu(1)[0])


def _volume_4d(tmp: Path) -> Path:
    return nifti(tmp / "series.nii", np.stack([good_hu().T] * 3, axis=-1))


def _nan_voxels(tmp: Path) -> Path:
    data = good_hu().T.copy()
    data[1, 2, 3] = np.nan
    return nifti(tmp / "nan.nii", data)


def _inf_voxels(tmp: Path) -> Path:
    data = good_hu().T.copy()
    data[0, 0, 0] = np.inf
    return nifti(tmp / "inf.nii", data)


def _constant(tmp: Path) -> Path:
    return save_volume(tmp / "constant.nii", np.full((4, 16, 16), -1000.0))


def _analyze_renamed(tmp: Path) -> Path:
    """An Analyze 7.5 header (no NIfTI magic) with its voxels appended, named .nii."""
    nib.save(nib.AnalyzeImage(good_hu().T, np.eye(4)), tmp / "analyze.hdr")
    path = tmp / "analyze.nii"
    path.write_bytes((tmp / "analyze.hdr").read_bytes() + (tmp / "analyze.img").read_bytes())
    return path


def _analyze_pair_without_img(tmp: Path) -> Path:
    """An Analyze .hdr whose .img was lost: refused by name, never opened as a scan."""
    nib.save(nib.AnalyzeImage(good_hu().T, np.eye(4)), tmp / "pair.hdr")
    (tmp / "pair.img").unlink()
    return tmp / "pair.hdr"


def _cifti(tmp: Path) -> Path:
    series = cifti2.cifti2_axes.SeriesAxis(0, 1, 3)
    brain = cifti2.cifti2_axes.BrainModelAxis.from_mask(np.ones((2, 2, 2), bool), affine=np.eye(4))
    img = cifti2.Cifti2Image(np.zeros((3, 8), np.float32), header=(series, brain))
    img.nifti_header.set_intent("ConnDenseSeries")
    path = tmp / "brain.dtseries.nii"
    nib.save(img, path)
    return path


def _mgh_renamed(tmp: Path) -> Path:
    nib.save(nib.MGHImage(good_hu().T, np.eye(4)), tmp / "scan.mgh")
    path = tmp / "scan.nii"
    (tmp / "scan.mgh").rename(path)
    return path


def _directory(tmp: Path) -> Path:
    path = tmp / "folder.nii"
    path.mkdir()
    return path


def _missing(tmp: Path) -> Path:
    return tmp / "absent.nii"


def _wrong_suffix(tmp: Path) -> Path:
    path = save_volume(tmp / "scan.nii", good_hu())
    return path.rename(tmp / "scan.npy")


#: name -> (builder, what the message must say)
SCAN_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "zero_byte_nii": (_empty, r"empty \(0 bytes\)"),
    "truncated_nii": (_truncated, r"truncated: \d+ bytes, the header needs \d+"),
    "shorter_than_a_header": (_shorter_than_header, "truncated.*smaller than a NIfTI header"),
    "random_bytes_named_nii": (_random_bytes, "not a readable NIfTI volume"),
    "gzip_that_is_not_nifti": (_gzip_not_nifti, "not a readable NIfTI volume"),
    "corrupt_gzip": (_corrupt_gzip, "not a valid gzip file"),
    "2d_image": (_image_2d, "expected a 3D volume, got a 2D image"),
    "4d_volume": (_volume_4d, "expected a 3D volume, got a 4D series"),
    "nan_voxels": (_nan_voxels, "1 voxels are NaN or Inf"),
    "inf_voxels": (_inf_voxels, "1 voxels are NaN or Inf"),
    "constant_volume": (_constant, r"constant \(-1000 everywhere\)"),
    "analyze_header_renamed_nii": (_analyze_renamed, "not a readable NIfTI volume"),
    "analyze_hdr_with_img_missing": (_analyze_pair_without_img, "not a NIfTI file name"),
    "cifti_dtseries": (_cifti, "Cifti2Image, not a NIfTI volume"),
    "mgh_renamed_nii": (_mgh_renamed, "not a readable NIfTI volume"),
    "directory_instead_of_file": (_directory, "is a directory"),
    "missing_file": (_missing, "file not found"),
    "not_a_nifti_name": (_wrong_suffix, "not a NIfTI file name"),
}


@pytest.mark.parametrize("case", list(SCAN_CASES), ids=list(SCAN_CASES))
def test_bad_scan_file(case, tmp_path):
    build, problem = SCAN_CASES[case]
    path = build(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(DataError, match=problem) as info:
        load_volume(path)
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: ")
    assert sorted(tmp_path.rglob("*")) == before and not leftovers(tmp_path)


def test_unreadable_file_permission(tmp_path, monkeypatch):
    """chmod 000 does not stop root (CI), so the permission check is simulated."""
    path = save_volume(tmp_path / "locked.nii", good_hu())
    real_access = os.access
    monkeypatch.setattr(ichlib.io.nifti.os, "access",
                        lambda p, mode, **kw: False if Path(p) == path else real_access(p, mode, **kw))
    with pytest.raises(DataError, match="no permission to read") as info:
        load_volume(path)
    assert info.value.path == str(path)


def test_unreadable_file_open_fails(tmp_path, monkeypatch):
    """The access check passes but opening fails (e.g. an ACL or a network mount)."""
    path = save_volume(tmp_path / "locked.nii", good_hu())

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(ichlib.io.nifti.nib, "load", refuse)
    with pytest.raises(DataError, match="PermissionError.*Permission denied") as info:
        load_volume(path)
    assert info.value.path == str(path)


@pytest.mark.parametrize("shape", [(4000, 4000, 4000), (9000, 16, 16), (2000, 2000, 100)],
                         ids=["too_many_voxels", "too_long_an_axis", "plausible_shape_tiny_file"])
def test_enormous_header_is_refused_before_allocation(tmp_path, monkeypatch, shape):
    path = tmp_path / "huge.nii"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), path)
    header = nib.load(path).header.copy()
    header.set_data_shape(shape)
    header.set_data_offset(352)  # nibabel zeroes a loaded header's vox_offset
    with open(path, "r+b") as fh:  # a new header only: the body stays 32 bytes
        fh.write(header.binaryblock)
    assert nib.load(path).shape == shape

    def no_voxels(*args, **kwargs):
        raise AssertionError("voxels were read")

    monkeypatch.setattr(ichlib.io.nifti, "_read_voxels", no_voxels)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="implausible shape|truncated") as info:
            load_volume(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.path == str(path)
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes"


def test_nifti2_is_accepted(tmp_path):
    """NIfTI-2 (64-bit header) is a clear yes: it loads like NIfTI-1."""
    hu = good_hu()
    nifti(tmp_path / "v1.nii", hu.T)
    nifti(tmp_path / "v2.nii", hu.T, nib.Nifti2Image)
    assert nib.load(tmp_path / "v2.nii").header.sizeof_hdr == 540
    np.testing.assert_array_equal(load_volume(tmp_path / "v2.nii").hu, load_volume(tmp_path / "v1.nii").hu)


# --- label tables and folder layouts ----------------------------------------------------

def base_labels() -> dict[int, np.ndarray]:
    return {49: labels_with(4), 50: labels_with(4, 3, 1, 3)}  # 050: epidural on slices 2-3


def csv_lines(root: Path) -> list[str]:
    return (root / LABEL_CSV).read_text().splitlines()


def edit_csv(root: Path, change: Callable[[list[str]], list[str] | str | bytes]) -> None:
    new = change(csv_lines(root))
    if isinstance(new, bytes):
        (root / LABEL_CSV).write_bytes(new)
    else:
        (root / LABEL_CSV).write_text(new if isinstance(new, str) else "\n".join(new) + "\n")


def set_cell(lines: list[str], row: int, column: str, value: str) -> list[str]:
    header = lines[0].split(",")
    cells = lines[row].split(",")
    cells[header.index(column)] = value
    return [*lines[:row], ",".join(cells), *lines[row + 1:]]


def _reorder(lines: list[str]) -> list[str]:
    table = [line.split(",") for line in lines]
    order = list(reversed(range(len(table[0]))))
    return [",".join(row[i] for i in order) for row in table]


def _drop_column(name: str) -> Callable[[list[str]], list[str]]:
    def change(lines: list[str]) -> list[str]:
        i = lines[0].split(",").index(name)
        return [",".join(c for j, c in enumerate(line.split(",")) if j != i) for line in lines]
    return change


def _as_floats(lines: list[str]) -> list[str]:
    out = [lines[0]]
    for line in lines[1:]:
        cells = line.split(",")
        out.append(",".join(cells[:2] + [f"{int(c)}.0" for c in cells[2:]]))
    return out


def _replace_mask(root: Path) -> None:
    save_volume(root / "masks" / "050.nii", np.zeros((4, 16, 8)), dtype=np.uint8)


def _remove_scan(root: Path) -> None:
    (root / "ct_scans" / "050.nii").unlink()


def _extra_scan(root: Path) -> None:
    save_volume(root / "ct_scans" / "051.nii", good_hu(4, 16))


#: name -> (edit of the CSV lines, or of the folder; file named; problem named)
LABEL_CASES: dict[str, tuple[Callable, str, str]] = {
    "missing_column": (_drop_column("Epidural"), LABEL_CSV, r"missing column\(s\) Epidural"),
    "value_2": (lambda ls: set_cell(ls, 6, "Epidural", "2"), LABEL_CSV,
                r"row 7 \(patient 050, slice 2\): Epidural = '2', expected 0 or 1"),
    "value_minus_1": (lambda ls: set_cell(ls, 2, "Subdural", "-1"), LABEL_CSV,
                      "Subdural = '-1', expected 0 or 1"),
    "value_yes": (lambda ls: set_cell(ls, 2, "Intraventricular", "yes"), LABEL_CSV,
                  "Intraventricular = 'yes', expected 0 or 1"),
    "duplicate_patient_slice": (lambda ls: [*ls, ls[2]], LABEL_CSV,
                                "duplicate rows for patient 049, slice 2"),
    "no_hemorrhage_contradicts_subtypes": (lambda ls: set_cell(ls, 6, "No_Hemorrhage", "1"), LABEL_CSV,
                                           "No_Hemorrhage = 1 but a subtype is 1"),
    "no_hemorrhage_0_without_subtype": (lambda ls: set_cell(ls, 1, "No_Hemorrhage", "0"), LABEL_CSV,
                                        "No_Hemorrhage = 0 but no subtype is 1"),
    "row_count_differs_from_slices": (lambda ls: ls[:-1], "050.nii",
                                      "volume has 4 slices but .* has 3 rows for patient 050"),
    "rows_but_no_scan": (_remove_scan, "050.nii", f"patient 050 has rows in {LABEL_CSV} but no scan"),
    "scan_with_no_rows": (_extra_scan, "051.nii", f"scan has no rows in {LABEL_CSV}"),
    "empty_csv": (lambda ls: "", LABEL_CSV, "label CSV is empty"),
    "header_only_csv": (lambda ls: ls[:1], LABEL_CSV, "header but no rows"),
    "misspelt_column": (lambda ls: "\n".join(ls).replace("Subdural", "Subduarl"), LABEL_CSV,
                        r"missing column\(s\) Subdural; found .*Subduarl"),
    "latin1_csv": (lambda ls: "\n".join([*ls, "49,5,0,0,0,0,0,1,0 # f\xfcnf"]).encode("latin-1"),
                   LABEL_CSV, "not a readable CSV"),
    "missing_csv": (lambda root: (root / LABEL_CSV).unlink(), LABEL_CSV, "label CSV not found"),
    "mask_shape_differs": (_replace_mask, "050.nii", r"mask shape \(4, 16, 8\) differs from its "
                           r"scan's \(4, 16, 16\)"),
}
_FOLDER_EDITS = {"rows_but_no_scan", "scan_with_no_rows", "mask_shape_differs", "missing_csv"}
_WHOLE_TABLE = {"missing_column", "empty_csv", "header_only_csv", "misspelt_column", "latin1_csv",
                "missing_csv"}


@pytest.mark.parametrize("case", list(LABEL_CASES), ids=list(LABEL_CASES))
def test_bad_labels_or_layout(case, make_ct_ich):
    change, file_name, problem = LABEL_CASES[case]
    root = make_ct_ich(base_labels(), size=16)
    if case in _FOLDER_EDITS:
        change(root)
    else:
        edit_csv(root, change)
    with pytest.raises(DataError, match=problem) as info:
        read_ct_ich(root)
    message = str(info.value)
    named = [line for line in message.splitlines() if file_name in line]
    assert any(re.search(problem, line) for line in named), message
    if case not in _WHOLE_TABLE:
        # With on_error="skip" the same problem is listed and the other patients are kept.
        data = read_ct_ich(root, on_error="skip")
        assert any(re.search(problem, str(p)) for p in data.problems)
        assert data.patient_ids and {p.patient_id for p in data.problems}.isdisjoint(data.patient_ids)
    assert not leftovers(root)


ACCEPTED: dict[str, Callable[[list[str]], list[str] | str]] = {
    "reordered_columns": _reorder,
    "utf8_bom": lambda ls: "\ufeff" + "\n".join(ls) + "\n",
    "float_values_0.0_1.0": _as_floats,
    "crlf_line_endings": lambda ls: "\r\n".join(ls) + "\r\n",
}


@pytest.mark.parametrize("case", list(ACCEPTED), ids=list(ACCEPTED))
def test_accepted_label_variants_give_the_right_labels(case, make_ct_ich):
    root = make_ct_ich(base_labels(), size=16)
    expected = read_ct_ich(root)
    edit_csv(root, ACCEPTED[case])
    data = read_ct_ich(root)
    assert data.problems == [] and data.patient_ids == ["049", "050"]
    np.testing.assert_array_equal(data.slice_labels("050"), expected.slice_labels("050"))
    epidural = list(LABELS).index("epidural")
    assert data.slice_labels("050")[:, epidural].tolist() == [0, 1, 1, 0]
    assert data.scan_labels("049").sum() == 0


# --- the commands on a folder with 3 good and 3 broken patients -------------------------

GOOD = (49, 50, 51)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """Patients 049-051 are fine; 052 is truncated, 053 has NaN voxels, 054 a label of 2."""
    labels = {n: labels_with(4, (n % 5) if n % 2 else None, 1, 3) for n in range(49, 55)}
    root = write_ct_ich(tmp_path_factory.mktemp("mixed") / "ds", labels, size=16)
    scan = root / "ct_scans" / "052.nii"
    scan.write_bytes(scan.read_bytes()[:-200])
    img = nib.load(root / "ct_scans" / "053.nii")
    voxels = np.asarray(img.dataobj, dtype=np.float32)
    voxels[3, 3, 1] = np.nan
    nib.save(nib.Nifti1Image(voxels, img.affine), root / "ct_scans" / "053.nii")
    edit_csv(root, lambda ls: set_cell(ls, 4 * 5 + 2, "Subdural", "2"))  # patient 054, slice 2
    return root


BROKEN = {"052": ("052.nii", "truncated"), "053": ("053.nii", "NaN or Inf"),
          "054": (LABEL_CSV, "Subdural = '2'")}


def test_check_lists_all_three_problems(mixed_folder, capsys):
    status = main(["check", str(mixed_folder)])
    out = capsys.readouterr().out
    assert status != 0
    assert "3 problem(s)" in out and "patients: 3" in out
    for file_name, problem in BROKEN.values():
        assert any(file_name in line and problem in line for line in out.splitlines()), (file_name, out)
    report = check_dataset(mixed_folder)
    assert sorted(p.patient_id for p in report.problems) == sorted(BROKEN)


def _tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    return tiny_train_config(data, out, **{"epochs": 1, "batch_size": 2, "img_size": 16, "seq_len": 2,
                                           "lstm_hidden": 8, "val_fraction": 1 / 3,
                                           "test_fraction": 1 / 3, "n_boot": 5, "amp": "off",
                                           "device": "cpu", **changes})


def test_training_without_skip_lists_every_broken_patient(mixed_folder, tmp_path):
    with pytest.raises(DataError) as info:
        fit(_tiny_config(mixed_folder, tmp_path / "run"))
    message = str(info.value)
    # The label problem and the truncated header are found first; the run stops there,
    # before writing anything, and says how to go on.
    for pid in ("052", "054"):
        file_name, problem = BROKEN[pid]
        assert any(file_name in line and problem in line for line in message.splitlines()), message
    assert "--skip-bad" in message
    assert not (tmp_path / "run" / "last.pt").exists() and not leftovers(tmp_path)


@pytest.fixture(scope="module")
def skipped_run(mixed_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("skip") / "run"
    return fit(_tiny_config(mixed_folder, out, skip_bad=True))


def test_training_with_skip_bad_leaves_them_out_and_says_which(skipped_run):
    """metrics.json lists them (``ichlib train --skip-bad`` also prints them to stderr:
    tests/test_train.py::test_cli_train_end_to_end)."""
    metrics = json.loads(skipped_run.metrics_path.read_text())
    skipped = {s["patient_id"]: s for s in metrics["skipped"]}
    assert sorted(skipped) == sorted(BROKEN)
    for pid, (file_name, problem) in BROKEN.items():
        assert skipped[pid]["path"].endswith(file_name) and problem in skipped[pid]["problem"]
    used = sorted(sum(skipped_run.split.values(), []))
    assert used == [f"{n:03d}" for n in GOOD]
    assert not leftovers(skipped_run.out_dir)


def test_predict_reports_the_broken_scan_and_predicts_the_others(skipped_run, mixed_folder, capsys):
    """See also tests/test_predict.py::test_a_broken_scan_does_not_stop_the_others."""
    scans = [mixed_folder / "ct_scans" / name for name in ("049.nii", "052.nii", "050.nii")]
    status = main(["predict", "--checkpoint", str(skipped_run.best_path), "--device", "cpu",
                   "--json", *map(str, scans)])
    captured = capsys.readouterr()
    assert status != 0
    result = json.loads(captured.out)
    assert [p["path"] for p in result["predictions"]] == [str(scans[0]), str(scans[2])]
    assert [e["path"] for e in result["errors"]] == [str(scans[1])]
    assert str(scans[1]) in captured.err and "truncated" in captured.err
