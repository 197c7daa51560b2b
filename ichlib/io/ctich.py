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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ichlib.errors import DataError
from ichlib.labels import CT_ICH_COLUMNS, LABELS, SUBTYPES
from ichlib.volumes import read_header

LABEL_CSV = "hemorrhage_diagnosis_raw_ct.csv"
DEMOGRAPHICS_CSV = "Patient_demographics.csv"
_REQUIRED_COLUMNS = ("PatientNumber", "SliceNumber", *CT_ICH_COLUMNS.values(), "No_Hemorrhage")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset folder.

    Attributes:
        path: The file at fault.
        problem: What is wrong.
        patient_id: The patient it affects, or None if it affects the whole folder.
    """

    path: str
    problem: str
    patient_id: str | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass
class CtIchData:
    """A validated CT-ICH folder.

    Attributes:
        root: The dataset folder.
        slices: One row per slice: ``patient_id``, ``slice_number`` (1-based), the six
            :data:`~ichlib.labels.LABELS` as 0/1 ints, and ``fracture``.
        patients: Indexed by ``patient_id``: ``n_slices`` and the six labels, each the OR
            over the patient's slices (``any`` = not No_Hemorrhage on some slice).
        scans: Scan path per patient.
        masks: Mask path per patient (None when the folder has no mask for it).
        problems: Problems found; the affected patients are not in the tables.
    """

    root: Path
    slices: pd.DataFrame
    patients: pd.DataFrame
    scans: dict[str, Path]
    masks: dict[str, Path | None]
    problems: list[Problem] = field(default_factory=list)

    @property
    def patient_ids(self) -> list[str]:
        """The usable patients, sorted."""
        return list(self.patients.index)

    def drop(self, patient_ids) -> None:
        """Remove patients from every table in place (e.g. after a failed deep check)."""
        drop = set(patient_ids)
        if not drop:
            return
        keep = [pid for pid in self.patient_ids if pid not in drop]
        self.patients = self.patients.loc[keep]
        self.slices = self.slices[self.slices["patient_id"].isin(keep)].reset_index(drop=True)
        self.scans = {pid: self.scans[pid] for pid in keep}
        self.masks = {pid: self.masks[pid] for pid in keep}

    def slice_labels(self, patient_id: str) -> np.ndarray:
        """Slice labels ``[n_slices, 6]`` (float32) in slice order, columns as LABELS."""
        rows = self.slices[self.slices["patient_id"] == patient_id]
        return rows[list(LABELS)].to_numpy(dtype=np.float32)

    def scan_labels(self, patient_id: str) -> np.ndarray:
        """Patient-level labels ``[6]`` (float32), columns as LABELS."""
        return self.patients.loc[patient_id, list(LABELS)].to_numpy(dtype=np.float32)


def patient_id_of(number: int | str) -> str:
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
    if path.is_dir():
        raise DataError(path, "is a directory, expected the label CSV")
    if not path.exists():
        raise DataError(path, "label CSV not found")
    try:
        raw = pd.read_csv(path, encoding="utf-8-sig", dtype=str, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(path, "label CSV is empty") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(path, f"not a readable CSV ({exc})") from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in _REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}; found {', '.join(raw.columns)}")
    if raw.empty:
        raise DataError(path, "label CSV has a header but no rows")

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
        "patient_id": [patient_id_of(i) if ok else "" for i, ok in zip(ids.fillna(0), good)],
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

    dup = table.duplicated(["patient_id", "slice_number"], keep=False) & good
    for pid, number in sorted(set(map(tuple, table.loc[dup, ["patient_id", "slice_number"]].to_numpy()))):
        bad_patients.add(pid)
        problems.append(Problem(str(path), f"duplicate rows for patient {pid}, slice {number}", pid))

    table = table[good & ~table["patient_id"].isin(bad_patients)]
    table = table[["patient_id", "slice_number", *LABELS, "fracture"]]
    table = table.sort_values(["patient_id", "slice_number"]).reset_index(drop=True)
    return table, problems


def read_ct_ich(root: str | os.PathLike, on_error: str = "raise") -> CtIchData:
    """Read and validate a CT-ICH folder.

    Checks every patient: scan present and a readable 3D NIfTI header, a mask of the same
    shape, one label row per slice with slice numbers 1..N, labels that are 0/1 and agree
    with No_Hemorrhage, no duplicates, no scan without rows and no rows without a scan.
    Only headers are read here; :func:`ichlib.check.check_dataset` also reads the voxels.

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

    scans = _index_files(scan_dir)
    masks = _index_files(root / "masks")
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
        try:
            header = read_header(scans[pid])
        except DataError as exc:
            problems.append(Problem(exc.path or str(scans[pid]), exc.problem, pid))
            bad.add(pid)
            continue
        n = header.shape[0]
        numbers = slices.loc[slices["patient_id"] == pid, "slice_number"].to_numpy()
        if len(numbers) != n or not np.array_equal(np.sort(numbers), np.arange(1, n + 1)):
            problems.append(Problem(str(scans[pid]), f"volume has {n} slices but {LABEL_CSV} has "
                                    f"{len(numbers)} rows for patient {pid} (slice numbers "
                                    f"{_ranges(numbers)}); expected SliceNumber 1..{n}", pid))
            bad.add(pid)
            continue
        mask = masks.get(pid)
        if mask is None:
            problems.append(Problem(str(root / "masks" / f"{pid}.nii"), "mask not found", pid))
            bad.add(pid)
            continue
        try:
            mask_header = read_header(mask)
        except DataError as exc:
            problems.append(Problem(exc.path or str(mask), exc.problem, pid))
            bad.add(pid)
            continue
        if mask_header.shape != header.shape:
            problems.append(Problem(str(mask), f"mask shape {mask_header.shape} differs from its "
                                    f"scan's {header.shape} (slices, H, W)", pid))
            bad.add(pid)
            continue
        n_slices[pid] = n

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


def dataset_root(root: str | os.PathLike, on_error: str) -> Path:
    """Check the ``on_error`` mode and that ``root`` is a folder; shared by the readers.

    Raises:
        ValueError: On an unknown ``on_error``.
        DataError: If ``root`` is missing or not a folder.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip'")
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder not found" if not root.exists() else "not a folder")
    return root


def problem_listing(problems: list[Problem], limit: int = 50) -> str:
    """``"N problem(s) found:"`` and one line per problem (at most ``limit``)."""
    listing = "\n  ".join(str(p) for p in problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{len(problems)} problem(s) found:\n  {listing}{more}"


def _index_files(folder: Path) -> dict[str, Path]:
    """Map patient id to file for ``NNN.nii`` / ``NNN.nii.gz`` in ``folder``."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        name = path.name
        stem = name[:-7] if name.endswith(".nii.gz") else name[:-4] if name.endswith(".nii") else None
        if stem is not None and stem.isdigit():
            found.setdefault(patient_id_of(stem), path)
    return found


def _ranges(numbers: np.ndarray) -> str:
    if len(numbers) == 0:
        return "none"
    return f"{int(np.min(numbers))}..{int(np.max(numbers))}"
