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
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import cifti2

import ichlib
import ichlib.errors
import ichlib.io.ctich
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


# =============================================================================================
# Issue 16: hostile inputs and faults. Each numbered item of the issue has its cases here or
# in the module tests named beside it (10: test_io_atomic / test_training_runfolder,
# 11: test_preprocess_cache, 12-14: test_training_runfolder, 16: test_io_dicom_enhanced).
# =============================================================================================

def _raw_header_edit(path: Path, offset: int, fmt: str, value) -> Path:
    """Overwrite one field of a NIfTI-1 header in place (gzip files are rewritten whole)."""
    raw = bytearray(gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes())
    raw[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))
    return path


# --- 1. vox_offset 0 ------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_1_vox_offset_inside_the_header_is_refused_not_read_shifted(tmp_path, suffix):
    path = _raw_header_edit(save_volume(tmp_path / f"scan{suffix}", good_hu()), 108, "<f", 0.0)
    assert nib.load(path).dataobj.offset == 0  # nibabel would read the header as voxels
    with pytest.raises(DataError, match=r"voxels start at byte 0 \(vox_offset\), inside the 348-byte "
                                        "header") as info:
        load_volume(path)
    assert info.value.path == str(path)


def test_1_check_and_predict_refuse_a_vox_offset_0_scan(make_ct_ich, skipped_run, capsys):
    root = make_ct_ich(base_labels(), size=16)
    scan = _raw_header_edit(root / "ct_scans" / "050.nii", 108, "<f", 0.0)
    assert main(["check", str(root), "--quick"]) == 1
    assert f"{scan}: header says the voxels start at byte 0" in capsys.readouterr().out
    status = main(["predict", "--checkpoint", str(skipped_run.best_path), "--device", "cpu", str(scan)])
    out, err = capsys.readouterr()
    assert status == 1 and out == "" and "vox_offset" in err


# --- 2. Unicode digits in a file name ----------------------------------------------------------

@pytest.mark.parametrize("name", ["1\u00b2.nii", "\u0663.nii", "049\u00b9.nii.gz"],
                         ids=["superscript_two", "arabic_indic_three", "superscript_one_gz"])
def test_2_a_unicode_digit_file_name_is_a_clear_problem(make_ct_ich, name, capsys):
    root = make_ct_ich(base_labels(), size=16)
    odd = root / "ct_scans" / name
    save_volume(odd, good_hu())
    with pytest.raises(DataError, match="is not a patient number") as info:
        read_ct_ich(root)
    assert str(odd) in str(info.value)
    data = read_ct_ich(root, on_error="skip")
    assert data.patient_ids == ["049", "050"] and [p.path for p in data.problems] == [str(odd)]
    assert main(["check", str(root)]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_2_training_with_skip_bad_lists_the_odd_file_and_trains_on_the_rest(make_ct_ich, tmp_path):
    from ichlib.training.data import prepare_data

    labels = {49 + i: labels_with(4, (i % 5) if i % 2 else None, 1, 3) for i in range(6)}
    root = make_ct_ich(labels, size=16)
    save_volume(root / "ct_scans" / "1\u00b2.nii", good_hu())
    with pytest.raises(DataError, match="1\u00b2.nii.*is not a patient number"):
        prepare_data(_tiny_config(root, tmp_path / "run"))
    prepared = prepare_data(_tiny_config(root, tmp_path / "run", skip_bad=True))
    assert [s["path"] for s in prepared.skipped] == [str(root / "ct_scans" / "1\u00b2.nii")]
    assert len(sum(prepared.split.values(), [])) == 6


# --- 3. two files for one patient -------------------------------------------------------------

@pytest.mark.parametrize("other", ["0049.nii", "49.nii", "049.nii.gz"])
def test_3_two_files_naming_one_patient_are_an_ambiguity_error(make_ct_ich, other):
    root = make_ct_ich(base_labels(), size=16)
    save_volume(root / "ct_scans" / other, good_hu() + 500)  # a different scan
    with pytest.raises(DataError, match="both name patient 049; keep one") as info:
        read_ct_ich(root)
    assert other in str(info.value) and "049.nii" in str(info.value)
    data = read_ct_ich(root, on_error="skip")
    assert data.patient_ids == ["050"]  # 049 is not silently read from either file


def test_3_two_masks_for_one_patient_are_an_ambiguity_error(make_ct_ich):
    root = make_ct_ich(base_labels(), size=16)
    (root / "masks" / "0050.nii").write_bytes((root / "masks" / "050.nii").read_bytes())
    data = read_ct_ich(root, on_error="skip")
    assert data.patient_ids == ["049"]
    assert any("0050.nii and 050.nii both name patient 050" in p.problem for p in data.problems)


# --- 4. label tables that are not regular files ---------------------------------------------

@pytest.mark.timeout(30)
def test_4_a_fifo_label_csv_is_refused_at_once(make_ct_ich, capsys):
    root = make_ct_ich(base_labels(), size=16)
    (root / LABEL_CSV).unlink()
    os.mkfifo(root / LABEL_CSV)
    with pytest.raises(DataError, match=r"is a FIFO \(named pipe\), not a regular file") as info:
        read_ct_ich(root)
    assert info.value.path == str(root / LABEL_CSV)
    assert main(["check", str(root)]) == 1
    assert "FIFO" in capsys.readouterr().out


@pytest.mark.timeout(30)
def test_4_a_label_csv_linked_to_dev_zero_is_refused(make_ct_ich):
    root = make_ct_ich(base_labels(), size=16)
    (root / LABEL_CSV).unlink()
    (root / LABEL_CSV).symlink_to("/dev/zero")
    with pytest.raises(DataError, match=r"is a character device \(a link to /dev/zero\)"):
        read_ct_ich(root)


def test_4_an_oversized_label_csv_is_refused_before_reading(make_ct_ich, monkeypatch):
    root = make_ct_ich(base_labels(), size=16)
    monkeypatch.setattr(ichlib.io.ctich, "MAX_TABLE_BYTES", 100)
    with pytest.raises(DataError, match="the label CSV is 0 MB, more than the 0 MB ichlib reads"):
        read_ct_ich(root)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("what", ["rsna_csv", "manifest", "dicom_source"])
def test_4_fifos_elsewhere_are_refused_at_once(tmp_path, what):
    from ichlib.io.dicom.series import load_dicom_series
    from ichlib.io.rsna import read_rsna_labels

    fifo = tmp_path / {"rsna_csv": "stage_2_train.csv", "manifest": "x.series", "dicom_source": "a.dcm"}[what]
    os.mkfifo(fifo)
    read = read_rsna_labels if what == "rsna_csv" else load_dicom_series
    with pytest.raises(DataError, match="FIFO") as info:
        read(fifo)
    assert info.value.path == str(fifo)


# --- 5. DICOM rescale and padding values that are not numbers ---------------------------------

def _dicom_series(folder: Path, n: int = 3, **changes) -> list[Path]:
    from ichlib.synthetic.rsna import ct_dataset, write_dataset

    folder.mkdir(parents=True)
    paths = []
    for k in range(n):
        stored = (np.arange(64, dtype=np.int16).reshape(8, 8) * 10 + k).astype(np.int16)
        ds = ct_dataset(stored, sop_uid=f"1.2.3.{k + 1}", series_uid="1.2.3", study_uid="1.2",
                        patient_id="P", position=(0.0, 0.0, 5.0 * k))
        if k == 1:
            for keyword, value in changes.items():
                if keyword == "PixelPaddingValue":
                    ds.add_new(0x00280120, "LO", value)  # a malformed VR, as found in the wild
                else:
                    setattr(ds, keyword, value)
        paths.append(write_dataset(folder / f"img{k}.dcm", ds))
    return paths


BAD_RESCALE = {
    "nan_intercept": ({"RescaleIntercept": "NaN"}, "RescaleIntercept is nan"),
    "inf_slope": ({"RescaleSlope": "Inf"}, "RescaleSlope is inf"),
    "zero_slope": ({"RescaleSlope": "0"}, "RescaleSlope is 0.0"),
    "text_padding": ({"PixelPaddingValue": "none"}, "PixelPaddingValue 'none' is not a number"),
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("case", list(BAD_RESCALE), ids=list(BAD_RESCALE))
def test_5_bad_rescale_or_padding_values_are_refused_per_file(tmp_path, case):
    from ichlib.io.dicom.headers import read_slice_header
    from ichlib.io.dicom.series import load_dicom_series

    changes, problem = BAD_RESCALE[case]
    paths = _dicom_series(tmp_path / "series", **changes)
    for read in (load_dicom_series, lambda folder: read_slice_header(paths[1])):
        with pytest.raises(DataError, match=problem) as info:
            read(tmp_path / "series")
        assert info.value.path == str(paths[1])


@pytest.mark.filterwarnings("ignore:Invalid value for VR", "ignore::ichlib.io.rsna.DuplicateLabelWarning")
def test_5_check_reports_and_skip_bad_leaves_out_a_series_with_a_nan_intercept(tmp_path, capsys):
    import pydicom

    from ichlib.io.rsna import read_rsna
    from ichlib.synthetic.rsna import write_synthetic_rsna
    from ichlib.training.data import prepare_data

    root = write_synthetic_rsna(tmp_path / "rsna", n_patients=4, size=32, n_slices_range=(8, 9),
                                duplicate_rows=0, workers=1)
    victim = sorted((root / "stage_2_train").glob("*.dcm"))[5]
    ds = pydicom.dcmread(victim)
    ds.RescaleIntercept = "NaN"
    ds.save_as(victim)
    series = str(ds.SeriesInstanceUID)
    os.environ["ICHLIB_CACHE"] = str(tmp_path / "cache")
    try:
        assert main(["check", str(root)]) == 1
        out = capsys.readouterr().out
        assert f"{victim}: RescaleIntercept is nan" in out and "No problems found" not in out
        data = read_rsna(root, on_error="skip", cache_dir=tmp_path / "cache")
        assert series not in data.patient_ids and len(data.patient_ids) >= 4
        config = _tiny_config(root, tmp_path / "run", skip_bad=True, val_fraction=0.25, test_fraction=0.25)
        prepared = prepare_data(config)
    finally:
        del os.environ["ICHLIB_CACHE"]
    assert any(s["path"] == str(victim) and "RescaleIntercept is nan" in s["problem"] for s in prepared.skipped)
    assert series not in sum(prepared.split.values(), [])


# --- 6. RSNA series whose UIDs sanitise to one name ---------------------------------------------

def test_6_series_whose_uids_sanitise_alike_keep_their_own_images(tmp_path):
    from ichlib.io.dicom.series import load_dicom_series
    from ichlib.io.rsna import RSNA_LABEL_ORDER, read_rsna
    from ichlib.synthetic.rsna import ct_dataset, write_dataset

    images = tmp_path / "r" / "stage_2_train"
    images.mkdir(parents=True)
    lines = ["ID,Label"]
    uids = {"ID_s/1": 100, "ID_s_1": 200, "ID_S_1": 300}  # "/" and case: one name once made safe
    for uid, value in uids.items():
        for k in range(3):
            sop = f"ID_{value}x{k}"
            ds = ct_dataset(np.full((8, 8), value + 1024 + k, np.int16), sop_uid=sop, series_uid=uid,
                            study_uid=f"ST{value}", patient_id=f"P{value}", position=(0.0, 0.0, 5.0 * k))
            write_dataset(images / f"{sop}.dcm", ds)
            lines += [f"{sop}_{label},0" for label in RSNA_LABEL_ORDER]
    (tmp_path / "r" / "stage_2_train.csv").write_text("\n".join(lines) + "\n")
    data = read_rsna(tmp_path / "r", cache_dir=tmp_path / "cache")
    assert sorted(data.patient_ids) == sorted(uids)
    assert len({str(data.scans[uid]).lower() for uid in uids}) == 3
    for uid, value in uids.items():
        assert load_dicom_series(data.scans[uid]).hu[:, 0, 0].tolist() == [value, value + 1, value + 2]


# --- 7. checkpoint contents -------------------------------------------------------------------

def _bad_checkpoint(path: Path, change: Callable[[dict], None]) -> Path:
    import torch

    from ichlib.model import CNNBiLSTM
    from ichlib.preprocess.dataset import PreprocessConfig

    torch.manual_seed(0)
    model = CNNBiLSTM(lstm_hidden=8)
    ckpt = {"model": model.state_dict(), "model_config": model.model_config,
            "preprocess": PreprocessConfig(img_size=16, seq_len=2).to_dict(),
            "thresholds": dict.fromkeys(LABELS, 0.5), "data": "real"}
    change(ckpt)
    torch.save({"format": "ichlib-checkpoint", "format_version": 1, "labels": list(LABELS), **ckpt}, path)
    return path


def _nan_weight(ckpt: dict) -> None:
    ckpt["model"]["scan_head.1.weight"][0, 0] = float("nan")


BAD_CHECKPOINTS = {
    "threshold_text": (lambda c: c["thresholds"].update(any="high"), "threshold of 'any' is 'high'"),
    "threshold_above_1": (lambda c: c["thresholds"].update(subdural=2.0), "threshold of 'subdural' is 2.0"),
    "threshold_nan": (lambda c: c["thresholds"].update(epidural=float("nan")), "threshold of 'epidural' is nan"),
    "threshold_unknown_label": (lambda c: c["thresholds"].update(blood=0.5), "unknown label 'blood'"),
    "thresholds_a_list": (lambda c: c.update(thresholds=[0.5] * 6), "thresholds is a list"),
    "nan_weights": (_nan_weight, r"1 weight tensor\(s\) hold NaN or Inf \(e.g. scan_head.1.weight\)"),
    "seq_len_0": (lambda c: c["preprocess"].update(seq_len=0), r"preprocess\['seq_len'\] is 0"),
    "seq_len_huge": (lambda c: c["preprocess"].update(seq_len=10**7), r"preprocess\['seq_len'\] is 10000000"),
    "img_size_2": (lambda c: c["preprocess"].update(img_size=2), r"preprocess\['img_size'\] is 2"),
    "img_size_text": (lambda c: c["preprocess"].update(img_size="256"), r"preprocess\['img_size'\] is '256'"),
    "lstm_hidden_0": (lambda c: c["model_config"].update(lstm_hidden=0), r"model_config\['lstm_hidden'\] is 0"),
    "lstm_hidden_huge": (lambda c: c["model_config"].update(lstm_hidden=10**6),
                         r"model_config\['lstm_hidden'\] is 1000000"),
    "channels_0": (lambda c: c["model_config"].update(in_channels=0), r"model_config\['in_channels'\] is 0"),
    "channels_not_windows": (lambda c: c["preprocess"].update(windows=["brain", "bone"]),
                             r"2 window\(s\) \['brain', 'bone'\] but the model takes 1 channel"),
    "unknown_window": (lambda c: c["preprocess"].update(windows=["lung"]), "windows \\['lung'\\] are not names"),
    "backbone_unknown": (lambda c: c["model_config"].update(backbone="vgg"), "backbone 'vgg' is not one of"),
    "data_unknown": (lambda c: c.update(data="phantom?"), "data is 'phantom\\?'"),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS), ids=list(BAD_CHECKPOINTS))
def test_7_checkpoint_contents_are_validated_naming_the_file(tmp_path, case):
    from ichlib.checkpoint import load_checkpoint
    from ichlib.errors import CheckpointError

    change, problem = BAD_CHECKPOINTS[case]
    path = _bad_checkpoint(tmp_path / "best.pt", change)
    with pytest.raises(CheckpointError, match=problem) as info:
        load_checkpoint(path)
    assert info.value.path == str(path) and str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("case", ["nan_weights", "threshold_text", "seq_len_huge"])
def test_7_predict_refuses_a_bad_checkpoint_with_exit_1_and_no_output(tmp_path, capsys, case):
    path = _bad_checkpoint(tmp_path / "best.pt", BAD_CHECKPOINTS[case][0])
    scan = save_volume(tmp_path / "scan.nii", good_hu(4, 16))
    status = main(["predict", "--checkpoint", str(path), "--device", "cpu", "--json", str(scan)])
    out, err = capsys.readouterr()
    assert status == 1 and out == ""
    assert err.startswith(f"ichlib predict: error: {path}: ") and len(err.strip().splitlines()) == 1


def test_7_weights_that_do_not_fit_name_the_checkpoint(tmp_path):
    from ichlib.checkpoint import load_checkpoint, model_from_checkpoint
    from ichlib.errors import CheckpointError

    def drop(ckpt):
        del ckpt["model"]["scan_head.1.weight"]

    path = _bad_checkpoint(tmp_path / "best.pt", drop)
    with pytest.raises(CheckpointError, match="does not match its model configuration") as info:
        model_from_checkpoint(load_checkpoint(path), source=path)
    assert info.value.path == str(path)


def test_7_a_nan_output_is_an_error_never_a_negative(skipped_run, tmp_path, monkeypatch):
    import torch

    from ichlib.predict import Predictor

    predictor = Predictor(skipped_run.best_path, device="cpu")
    with torch.no_grad():
        predictor.model.scan_head[1].bias.fill_(float("nan"))
    scan = save_volume(tmp_path / "scan.nii", good_hu(4, 16))
    with pytest.raises(ichlib.errors.IchlibError, match="the model's output is NaN or Inf") as info:
        predictor(scan)
    assert str(scan) in str(info.value)


# --- 8. two scans with one file name ----------------------------------------------------------

def test_8_cam_outputs_of_scans_with_one_name_do_not_overwrite_each_other(skipped_run, mixed_folder,
                                                                          tmp_path, capsys):
    scans = []
    for folder, number in (("a", "049"), ("b", "050")):
        (tmp_path / folder).mkdir()
        scans.append(tmp_path / folder / "scan.nii")
        scans[-1].write_bytes((mixed_folder / "ct_scans" / f"{number}.nii").read_bytes())
    out = tmp_path / "cam"
    status = main(["predict", "--checkpoint", str(skipped_run.best_path), "--device", "cpu", "--json",
                   "--cam", str(out), "--cam-label", "any", *map(str, scans)])
    doc = json.loads(capsys.readouterr().out)
    assert status == 0
    written = [p["cam"] for p in doc["predictions"]]
    assert [Path(w[0]).name for w in written] == ["a_scan_cam_any.png", "b_scan_cam_any.png"]
    assert [Path(w[1]).name for w in written] == ["a_scan_cam_any.nii.gz", "b_scan_cam_any.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(w).name for ws in written for w in ws)
    probabilities = [p["probabilities"] for p in doc["predictions"]]
    assert probabilities[0] != probabilities[1]  # two scans, so two different figures
    assert Path(written[0][0]).read_bytes() != Path(written[1][0]).read_bytes()


def test_8_unique_stems():
    from ichlib.explain.report import unique_stems

    paths = [Path("/d/a/scan.nii"), Path("/d/b/scan.nii.gz"), Path("/d/c/other.nii"),
             Path("/e/a/scan.nii"), Path("/d/a/scan.nii")]
    stems = unique_stems(paths)
    assert stems[Path("/d/c/other.nii")] == "other"
    assert stems[Path("/d/b/scan.nii.gz")] == "b_scan"
    assert stems[Path("/d/a/scan.nii")].startswith("a_scan_") and stems[Path("/e/a/scan.nii")].startswith("a_scan_")
    assert len(set(stems.values())) == 4


# --- 9. degenerate geometry under predict --cam -----------------------------------------------

def _nan_sform(path: Path) -> Path:
    """Set the sform (code 1) to hold a NaN, leaving everything else as it was."""
    header = nib.load(path).header
    offset = 280  # srow_x: 4 float32 at bytes 280..295; sform_code (int16) at 254
    _raw_header_edit(path, 254, "<h", 1)
    _raw_header_edit(path, offset, "<f", float("nan"))
    assert header["sizeof_hdr"] == 348
    return path


def test_9_a_nan_sform_scan_gets_an_error_and_the_later_scans_their_maps(skipped_run, mixed_folder,
                                                                        tmp_path, capsys):
    scans = [tmp_path / f"{n}.nii" for n in ("049", "050", "051")]
    for scan in scans:
        scan.write_bytes((mixed_folder / "ct_scans" / scan.name).read_bytes())
    _nan_sform(scans[1])
    out = tmp_path / "cam"
    status = main(["predict", "--checkpoint", str(skipped_run.best_path), "--device", "cpu",
                   "--cam", str(out), *map(str, scans)])
    err = capsys.readouterr().err
    assert status == 1
    assert f"ichlib predict: warning: {scans[1]}: its affine (sform/qform) holds NaN or Inf" in err
    assert f"error: Grad-CAM for {scans[1]}: {scans[1]}: its affine (sform/qform) holds NaN" in err
    assert "Traceback" not in err
    names = sorted(p.name for p in out.iterdir())
    for stem in ("049", "051"):
        assert any(n.startswith(f"{stem}_cam_") and n.endswith(".png") for n in names)
        assert any(n.startswith(f"{stem}_cam_") and n.endswith(".nii.gz") for n in names)
    assert not any(n.startswith("050_cam_") and n.endswith(".nii.gz") for n in names)
    assert not [n for n in names if ".tmp" in n]


def test_9_a_dicom_series_with_pixel_spacing_0_does_not_stop_the_others(skipped_run, mixed_folder,
                                                                        tmp_path, capsys):
    from ichlib.synthetic.rsna import ct_dataset, write_dataset

    series = tmp_path / "series"
    series.mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        ds = ct_dataset(rng.integers(900, 1100, (16, 16)).astype(np.int16), sop_uid=f"1.2.9.{k + 1}",
                        series_uid="1.2.9", study_uid="1.2", patient_id="P", position=(0.0, 0.0, 5.0 * k),
                        pixel_spacing=(0.0, 0.0))
        write_dataset(series / f"img{k}.dcm", ds)
    good = tmp_path / "051.nii"
    good.write_bytes((mixed_folder / "ct_scans" / "051.nii").read_bytes())
    status = main(["predict", "--checkpoint", str(skipped_run.best_path), "--device", "cpu",
                   "--cam", str(tmp_path / "cam"), str(series), str(good)])
    err = capsys.readouterr().err
    assert f"warning: {series}: PixelSpacing (0, 0) is not a positive voxel size" in err
    assert status == 1 and f"Grad-CAM for {series}: {series}: voxel spacing (5.0, 0.0, 0.0)" in err
    assert len(list((tmp_path / "cam").glob("051_cam_*.png"))) == 1
    assert len(list((tmp_path / "cam").glob("051_cam_*.nii.gz"))) == 1


# --- 15. data that used to be accepted without a word -----------------------------------------

def _typed_nifti(path: Path, data: np.ndarray, dtype, slope=None, inter=None) -> Path:
    img = nib.Nifti1Image(data.astype(dtype) if dtype is not None else data, np.diag([0.5, 0.5, 5, 1]))
    img.header.set_data_dtype(dtype if dtype is not None else data.dtype)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, path)
    return path


REFUSED_VOLUMES = {
    "zero_to_one": (lambda p: nifti(p, np.random.default_rng(0).random((16, 16, 4)).astype(np.float32)),
                    r"all values lie in \[.*\]: a normalised image or a mask, not Hounsfield units"),
    "complex": (lambda p: _typed_nifti(p, good_hu().T + 1j, np.complex64), r"voxels are complex"),
    "int8": (lambda p: _typed_nifti(p, np.clip(good_hu().T, -100, 100), np.int8),
             "voxels are int8 without scl_slope/scl_inter"),
    "bool_as_uint8": (lambda p: _typed_nifti(p, good_hu().T > 30, np.uint8),
                      "voxels are uint8 without scl_slope/scl_inter"),
}


@pytest.mark.parametrize("case", list(REFUSED_VOLUMES), ids=list(REFUSED_VOLUMES))
def test_15_volumes_that_cannot_be_hu_are_refused(tmp_path, case):
    build, problem = REFUSED_VOLUMES[case]
    path = build(tmp_path / "scan.nii")
    with pytest.raises(DataError, match=problem) as info:
        load_volume(path)
    assert info.value.path == str(path)


def test_15_a_scaled_uint8_volume_is_still_read_as_hu(tmp_path):
    hu = np.random.default_rng(0).integers(0, 255, (16, 16, 4)) * 10.0 - 1024.0
    img = nib.Nifti1Image(hu.astype(np.float32), np.diag([0.5, 0.5, 5, 1]))
    img.header.set_data_dtype(np.uint8)  # nibabel stores it with scl_slope and scl_inter
    nib.save(img, tmp_path / "scan.nii")
    assert nib.load(tmp_path / "scan.nii").dataobj.slope != 1.0
    np.testing.assert_allclose(load_volume(tmp_path / "scan.nii").hu, np.transpose(hu, (2, 1, 0)), atol=6)


@pytest.mark.parametrize("pixdim", [float("nan"), 0.0], ids=["nan", "zero"])
def test_15_nan_or_zero_spacing_is_warned(tmp_path, pixdim):
    path = _raw_header_edit(save_volume(tmp_path / "scan.nii", good_hu()), 80, "<f", pixdim)  # pixdim[1]
    with pytest.warns(ichlib.errors.DataWarning, match=r"voxel size .* is not positive and finite"):
        volume = load_volume(path)
    assert volume.hu.shape == (4, 16, 16)


def test_15_a_mask_off_its_scans_grid_is_a_problem(make_ct_ich):
    root = make_ct_ich(base_labels(), size=16)
    mask = root / "masks" / "050.nii"
    img = nib.load(mask)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine @ np.diag([1, 1, 1, 1]) + np.array(
        [[0, 0, 0, 3.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]), img.header), mask)
    data = read_ct_ich(root, on_error="skip")
    assert data.patient_ids == ["049"]
    assert any(p.path == str(mask) and "mask affine differs from its scan's" in p.problem
               for p in data.problems)


def test_15_mr_dicom_is_refused(tmp_path):
    import shutil

    from pydicom.data import get_testdata_file

    from ichlib.io.dicom.series import read_dicom_series_header

    folder = tmp_path / "mr"
    folder.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    with pytest.raises(DataError, match="Modality MR .* is not CT"):
        read_dicom_series_header(folder)


def test_15_a_gz_header_claiming_hundreds_of_mb_is_refused_before_allocating(tmp_path, monkeypatch):
    path = tmp_path / "huge.nii.gz"
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 200))  # 200 M voxels: 800 MB as float32
    header.set_data_dtype(np.float32)
    header.set_data_offset(352)
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4))
    assert path.stat().st_size < 200

    def no_voxels(*args, **kwargs):
        raise AssertionError("voxels were read")

    monkeypatch.setattr(ichlib.io.nifti, "_read_voxels", no_voxels)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="header claims 839 MB of voxels, more than a .*-byte gzip "
                                            "file can hold") as info:
            load_volume(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.path == str(path) and peak < 8 * 1024 * 1024


# --- the JSON that predict writes ------------------------------------------------------------

def test_predict_json_names_the_version_checkpoint_data_and_cam_files(skipped_run, mixed_folder, tmp_path, capsys):
    import torch

    ckpt = torch.load(skipped_run.best_path, map_location="cpu", weights_only=True)
    ckpt["data"] = "synthetic"
    synthetic = tmp_path / "synthetic.pt"
    torch.save(ckpt, synthetic)
    scan = mixed_folder / "ct_scans" / "049.nii"
    status = main(["predict", "--checkpoint", str(synthetic), "--device", "cpu", "--json",
                   "--cam", str(tmp_path / "cam"), "--no-cam-nifti", str(scan)])
    doc = json.loads(capsys.readouterr().out)
    assert status == 0
    assert doc["ichlib_version"] == ichlib.__version__ and doc["checkpoint"] == str(synthetic.resolve())
    assert doc["trained_on"] == "synthetic" and doc["note"].startswith("SYNTHETIC")
    (png,) = doc["predictions"][0]["cam"]
    assert Path(png).exists() and png.endswith("049_cam_" + max(doc["predictions"][0]["probabilities"],
                                                                   key=doc["predictions"][0]["probabilities"].get) + ".png")


def test_cam_title_says_synthetic(skipped_run, mixed_folder, tmp_path, monkeypatch):
    from ichlib.checkpoint import load_checkpoint, model_from_checkpoint
    from ichlib.explain.report import write_cam_report
    from ichlib.viz import cam as viz_cam

    titles = []
    real = viz_cam.plot_cam_montage
    monkeypatch.setattr(viz_cam, "plot_cam_montage",
                        lambda *a, **k: titles.append(k["title"]) or real(*a, **k))
    model, config = model_from_checkpoint(load_checkpoint(skipped_run.best_path))
    scan = mixed_folder / "ct_scans" / "049.nii"
    for synthetic in (True, False):
        write_cam_report(model, config, scan, tmp_path, save_nifti=False, synthetic=synthetic,
                         figure=viz_cam.save_cam_montage)
    assert titles[0].startswith("SYNTHETIC: model trained on the synthetic phantom")
    assert "SYNTHETIC" not in titles[1]
