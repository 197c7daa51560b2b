"""The PhysioNet CT-ICH folder layout: label tables, file paths and validation.

Layout (CT-ICH 1.3.1)::

    ROOT/ct_scans/NNN.nii            HU volume, slices on the last axis
    ROOT/masks/NNN.nii               0/255 hemorrhage mask, same shape
    ROOT/hemorrhage_diagnosis_raw_ct.csv   one row per slice, SliceNumber 1-based
    ROOT/Patient_demographics.csv    two-row header (optional here)

Patient IDs are the 3-digit zero-padded strings of the file names (``"049"``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ichlib.errors import DataError
from ichlib.io.files import MAX_TABLE_BYTES, regular_file
from ichlib.io.load import read_header
from ichlib.io.tables import (
    CtIchData,
    Problem,
    dataset_root,
    problem_listing,
    refuse_duplicate_columns,
)
from ichlib.labels import CT_ICH_COLUMNS, LABELS, SUBTYPES

LABEL_CSV = "hemorrhage_diagnosis_raw_ct.csv"
_REQUIRED_COLUMNS = ("PatientNumber", "SliceNumber", *CT_ICH_COLUMNS.values(), "No_Hemorrhage")


def _patient_id_of(number: int | str) -> str:
    """Format a patient number as CT-ICH's 3-digit file stem (``49 -> "049"``)."""
    return f"{int(number):03d}"


def read_label_table(csv_path: str | os.PathLike) -> tuple[pd.DataFrame, list[Problem]]:
    """Read ``hemorrhage_diagnosis_raw_ct.csv`` into ichlib's slice table.

    Columns are read by name (order does not matter); a UTF-8 BOM and ``0.0/1.0`` values
    are accepted. Rows with problems are reported, and their patients dropped.

    Returns:
        The slice table (see :class:`CtIchData`) and the problems found.

    Raises:
        DataError: If the file is missing, empty, or lacks a required column.
    """
    path = Path(csv_path)
    raw = _read_csv(path)
    problems: list[Problem] = []
    bad_patients: set[str] = set()
    value_columns = [*CT_ICH_COLUMNS.values(), "No_Hemorrhage"]
    if "Fracture_Yes_No" in raw.columns:
        value_columns.append("Fracture_Yes_No")

    ids = pd.to_numeric(raw["PatientNumber"], errors="coerce")
    numbers = pd.to_numeric(raw["SliceNumber"], errors="coerce")
    for row in np.flatnonzero(ids.isna() | (ids % 1 != 0) | numbers.isna() | (numbers % 1 != 0) | (numbers < 1)):
        problems.append(Problem(str(path), f"row {row + 2}: PatientNumber/SliceNumber "
                                f"{raw.at[row, 'PatientNumber']!r}/{raw.at[row, 'SliceNumber']!r} "
                                "are not a patient number and a 1-based slice number"))
    good = ~(ids.isna() | (ids % 1 != 0) | numbers.isna() | (numbers % 1 != 0) | (numbers < 1))
    table = pd.DataFrame({
        "patient_id": [_patient_id_of(i) if ok else "" for i, ok in zip(ids.fillna(0), good)],
        "slice_number": numbers.fillna(0).astype(int),
    })
    values = {}
    for col in value_columns:
        num = pd.to_numeric(raw[col], errors="coerce")
        invalid = ~num.isin([0, 1])
        for row in np.flatnonzero(invalid & good):
            pid = table.at[row, "patient_id"]
            bad_patients.add(pid)
            problems.append(Problem(str(path), f"row {row + 2} (patient {pid}, slice "
                                    f"{table.at[row, 'slice_number']}): {col} = {raw.at[row, col]!r}, "
                                    "expected 0 or 1", pid))
        values[col] = num.where(~invalid, 0).astype(int)

    for label, col in CT_ICH_COLUMNS.items():
        table[label] = values[col]
    subtype_any = table[list(SUBTYPES)].max(axis=1)
    no_hem = values["No_Hemorrhage"]
    contradiction = (no_hem == subtype_any) & good
    for row in np.flatnonzero(contradiction):
        pid = table.at[row, "patient_id"]
        bad_patients.add(pid)
        what = "but a subtype is 1" if no_hem[row] == 1 else "but no subtype is 1"
        problems.append(Problem(str(path), f"row {row + 2} (patient {pid}, slice "
                                f"{table.at[row, 'slice_number']}): No_Hemorrhage = {no_hem[row]} {what}", pid))
    table["any"] = 1 - no_hem
    table["fracture"] = values.get("Fracture_Yes_No", pd.Series(0, index=table.index))

    for pid, number in _duplicates(table, good):
        bad_patients.add(pid)
        problems.append(Problem(str(path), f"duplicate rows for patient {pid}, slice {number}", pid))

    table = table[good & ~table["patient_id"].isin(bad_patients)]
    table = table[["patient_id", "slice_number", *LABELS, "fracture"]]
    table = table.sort_values(["patient_id", "slice_number"]).reset_index(drop=True)
    return table, problems


def _read_csv(path: Path) -> pd.DataFrame:
    """The label CSV as strings, with its header checked.

    Raises:
        DataError: If the file is missing, empty, unreadable, names a column twice, or
            lacks a required column.
    """
    regular_file(path, "label CSV", MAX_TABLE_BYTES)
    try:
        raw = pd.read_csv(path, encoding="utf-8-sig", dtype=str, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(path, "label CSV is empty") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(path, f"not a readable CSV ({exc})") from exc
    refuse_duplicate_columns(path)
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in _REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}; found {', '.join(raw.columns)}")
    if raw.empty:
        raise DataError(path, "label CSV has a header but no rows")
    return raw


def _duplicates(table: pd.DataFrame, good: pd.Series) -> list[tuple[str, int]]:
    """``(patient, slice)`` pairs with more than one row, sorted."""
    dup = table.duplicated(["patient_id", "slice_number"], keep=False) & good
    return sorted(set(map(tuple, table.loc[dup, ["patient_id", "slice_number"]].to_numpy())))


def read_ct_ich(root: str | os.PathLike, on_error: str = "raise") -> CtIchData:
    """Read and validate a CT-ICH folder.

    Checks every patient: scan present and a readable 3D NIfTI header, a mask of the same
    shape, one label row per slice with slice numbers 1..N, labels that are 0/1 and agree
    with No_Hemorrhage, no duplicates, no scan without rows and no rows without a scan.
    Only headers are read here; :func:`ichlib.io.check.check_dataset` also reads the voxels.

    Args:
        root: The dataset folder.
        on_error: ``"raise"`` to raise on any problem (listing all of them), or ``"skip"``
            to drop the affected patients and keep the problems in ``.problems``.

    Raises:
        DataError: If the folder cannot be used at all, or ``on_error="raise"`` and a
            problem was found.
    """
    root = dataset_root(root, on_error)
    scan_dir = root / "ct_scans"
    if not scan_dir.is_dir():
        raise DataError(scan_dir, "missing the ct_scans/ folder of the CT-ICH layout")
    slices, problems = read_label_table(root / LABEL_CSV)

    scans = _index_files(scan_dir, problems)
    masks = _index_files(root / "masks", problems)
    csv_ids = set(slices["patient_id"]) | {p.patient_id for p in problems if p.patient_id}
    bad: set[str] = {p.patient_id for p in problems if p.patient_id}

    for pid in sorted(set(scans) - csv_ids):
        problems.append(Problem(str(scans[pid]), f"scan has no rows in {LABEL_CSV}", pid))
        bad.add(pid)
    for pid in sorted(csv_ids - set(scans)):
        problems.append(Problem(str(scan_dir / f"{pid}.nii"),
                                f"patient {pid} has rows in {LABEL_CSV} but no scan", pid))
        bad.add(pid)

    n_slices: dict[str, int] = {}
    for pid in sorted(set(scans) - bad):
        numbers = slices.loc[slices["patient_id"] == pid, "slice_number"].to_numpy()
        problem = _check_patient(pid, scans[pid], masks.get(pid), numbers, root)
        if isinstance(problem, Problem):
            problems.append(problem)
            bad.add(pid)
        else:
            n_slices[pid] = problem

    if problems and on_error == "raise":
        raise DataError(root, problem_listing(problems))

    slices = slices[slices["patient_id"].isin(n_slices)].reset_index(drop=True)
    patients = slices.groupby("patient_id")[list(LABELS)].max().astype(int)
    patients.insert(0, "n_slices", pd.Series(n_slices))
    patients = patients.sort_index()
    patients.index.name = "patient_id"
    return CtIchData(
        root=root,
        slices=slices,
        patients=patients,
        scans={pid: scans[pid] for pid in patients.index},
        masks={pid: masks.get(pid) for pid in patients.index},
        problems=problems,
    )


def _check_patient(pid: str, scan: Path, mask: Path | None, numbers: np.ndarray,
                   root: Path) -> int | Problem:
    """The scan's slice count, or the first problem with its scan, labels or mask (headers only)."""
    try:
        header = read_header(scan)
    except DataError as exc:
        return Problem(exc.path or str(scan), exc.problem, pid)
    n = header.shape[0]
    if len(numbers) != n or not np.array_equal(np.sort(numbers), np.arange(1, n + 1)):
        return Problem(str(scan), f"volume has {n} slices but {LABEL_CSV} has {len(numbers)} rows "
                       f"for patient {pid} (slice numbers {_ranges(numbers)}); expected SliceNumber "
                       f"1..{n}", pid)
    if mask is None:
        return Problem(str(root / "masks" / f"{pid}.nii"), "mask not found", pid)
    try:
        mask_header = read_header(mask, mask=True)
    except DataError as exc:
        return Problem(exc.path or str(mask), exc.problem, pid)
    if mask_header.shape != header.shape:
        return Problem(str(mask), f"mask shape {mask_header.shape} differs from its scan's "
                       f"{header.shape} (slices, H, W)", pid)
    if not _same_grid(header.affine, mask_header.affine):
        return Problem(str(mask), "mask affine differs from its scan's, so the mask does not lie on "
                       f"the scan's voxels (mask {_fmt_affine(mask_header.affine)}, scan "
                       f"{_fmt_affine(header.affine)})", pid)
    return n


def _same_grid(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Whether two affines place voxels within 0.01 mm (unknown or non-finite ones are not compared)."""
    if a is None or b is None or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return True
    return bool(np.allclose(a, b, rtol=0.0, atol=1e-2))


def _fmt_affine(affine: np.ndarray | None) -> str:
    if affine is None:
        return "unknown"
    return "[" + "; ".join(" ".join(f"{v:g}" for v in row) for row in np.asarray(affine)[:3]) + "]"


def _index_files(folder: Path, problems: list[Problem]) -> dict[str, Path]:
    """Map patient id to file for ``NNN.nii`` / ``NNN.nii.gz`` in ``folder``.

    A NIfTI file whose name is not a patient number in ASCII digits (``1².nii``, ``scan.nii``)
    is a problem of its own, and so are two files that name the same patient (``0001.nii``
    beside ``001.nii``, or ``001.nii`` beside ``001.nii.gz``): that patient gets no file.
    """
    found: dict[str, list[Path]] = {}
    if not folder.is_dir():
        return {}
    for path in sorted(folder.iterdir()):
        name = path.name
        stem = name[:-7] if name.endswith(".nii.gz") else name[:-4] if name.endswith(".nii") else None
        if stem is None:
            continue
        if not _ASCII_NUMBER.fullmatch(stem):
            problems.append(Problem(str(path), f"file name {name!r} is not a patient number (ASCII "
                                    "digits, as in 049.nii); rename or remove the file"))
            continue
        found.setdefault(_patient_id_of(stem), []).append(path)
    for pid, paths in found.items():
        if len(paths) > 1:
            problems.append(Problem(str(folder), f"{' and '.join(p.name for p in paths)} both name "
                                    f"patient {pid}; keep one", pid))
    return {pid: paths[0] for pid, paths in found.items()}


_ASCII_NUMBER = re.compile(r"[0-9]+")


def _ranges(numbers: np.ndarray) -> str:
    if len(numbers) == 0:
        return "none"
    return f"{int(np.min(numbers))}..{int(np.max(numbers))}"
