"""The tables every dataset reader fills: one row per slice, one per patient (or series), file
paths, and the problems found; plus label counts and co-occurrence over them.

CT-ICH (:mod:`ichlib.io.ctich`) and RSNA 2019 (:mod:`ichlib.io.rsna`) both return a
:class:`CtIchData`, so everything downstream reads one shape.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ichlib.errors import DataError
from ichlib.io.load import load_mask
from ichlib.labels import LABELS, SUBTYPES


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
    _grouped: tuple[pd.DataFrame, dict[str, np.ndarray]] | None = field(default=None, init=False, repr=False,
                                                                        compare=False)

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
        """Slice labels ``[n_slices, 6]`` (float32) in slice order, columns as LABELS.

        The table is grouped by patient once (again whenever ``slices`` is replaced, as
        :meth:`drop` does); each call returns a fresh copy, so callers may modify it.
        """
        if self._grouped is None or self._grouped[0] is not self.slices:
            labels = self.slices[list(LABELS)].to_numpy(dtype=np.float32)
            groups = self.slices.groupby("patient_id", sort=False).indices
            self._grouped = (self.slices, {pid: labels[np.sort(rows)] for pid, rows in groups.items()})
        found = self._grouped[1].get(patient_id)
        return found.copy() if found is not None else np.zeros((0, len(LABELS)), dtype=np.float32)

    def scan_labels(self, patient_id: str) -> np.ndarray:
        """Patient-level labels ``[6]`` (float32), columns as LABELS."""
        return self.patients.loc[patient_id, list(LABELS)].to_numpy(dtype=np.float32)


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


def refuse_duplicate_columns(path: str | os.PathLike) -> None:
    """Refuse a CSV whose header row names a column twice (spaces around names ignored).

    pandas reads a second ``Epidural`` as ``Epidural.1`` and the reader would silently use
    the first; which of the two is right cannot be told, so the table is refused.

    Raises:
        DataError: Naming the file, the column and its positions (1-based).
    """
    with open(path, encoding="utf-8-sig", newline="") as fh:
        header = [name.strip() for name in next(csv.reader(fh, skipinitialspace=True), [])]
    repeated = [name for name, n in Counter(header).items() if n > 1 and name]
    if repeated:
        name = repeated[0]
        positions = [i + 1 for i, h in enumerate(header) if h == name]
        raise DataError(path, f"column {name!r} appears {len(positions)} times in the header "
                              f"(columns {', '.join(map(str, positions))}); which one holds the "
                              "labels cannot be told, so the table is refused")


def problem_listing(problems: list[Problem], limit: int = 50) -> str:
    """``"N problem(s) found:"`` and one line per problem (at most ``limit``)."""
    listing = "\n  ".join(str(p) for p in problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{len(problems)} problem(s) found:\n  {listing}{more}"


def label_counts(data: CtIchData) -> pd.DataFrame:
    """Positives per label at patient and slice level.

    Returns:
        Table indexed by label with columns ``patients``, ``patients_%``, ``slices``,
        ``slices_%``.
    """
    pats, slices = data.patients, data.slices
    return pd.DataFrame({
        "patients": [int(pats[lab].sum()) for lab in LABELS],
        "patients_%": [100.0 * pats[lab].mean() for lab in LABELS],
        "slices": [int(slices[lab].sum()) for lab in LABELS],
        "slices_%": [100.0 * slices[lab].mean() for lab in LABELS],
    }, index=pd.Index(LABELS, name="label")).round(1)


def cooccurrence(data: CtIchData, level: str = "patients") -> pd.DataFrame:
    """How often two subtypes occur together: a ``5 x 5`` count matrix.

    Args:
        data: The dataset.
        level: ``"patients"`` or ``"slices"``.
    """
    table = data.patients if level == "patients" else data.slices
    x = table[list(SUBTYPES)].to_numpy(dtype=int)
    return pd.DataFrame(x.T @ x, index=list(SUBTYPES), columns=list(SUBTYPES))


def largest_lesion_slice(data: CtIchData, subtype: str, max_patients: int | None = 6
                         ) -> tuple[str, int] | None:
    """The slice that shows ``subtype`` best: ``(patient_id, SliceNumber)`` or None.

    Among slices labelled with ``subtype`` alone (CT-ICH masks mark all blood on a slice, not
    one subtype), or with it at all when no slice has it alone, the one with the largest mask
    area, reading the masks of at most ``max_patients`` patients.
    """
    rows = data.slices[data.slices[subtype] == 1]
    alone = rows[rows[list(SUBTYPES)].sum(axis=1) == 1]
    rows = alone if len(alone) else rows
    best: tuple[int, str, int] | None = None
    for pid, group in list(rows.groupby("patient_id"))[:max_patients]:
        if data.masks.get(pid) is None:
            continue
        mask = load_mask(data.masks[pid])
        for number in group["slice_number"]:
            area = int(mask[number - 1].sum())
            if best is None or area > best[0]:
                best = (area, str(pid), int(number))
    return None if best is None else best[1:]
