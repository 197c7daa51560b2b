"""Validate a dataset folder and report every problem, not just the first."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ichlib.errors import DataError
from ichlib.io.ctich import read_ct_ich
from ichlib.io.dicom.series import load_dicom_series
from ichlib.io.folder import detect_format
from ichlib.io.load import load_mask, load_volume
from ichlib.io.rsna import read_rsna
from ichlib.io.tables import CtIchData, Problem
from ichlib.labels import LABELS


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`.

    Attributes:
        root: The folder checked.
        data: The usable part of the folder (None if nothing could be read).
        problems: Every problem found.
    """

    root: Path
    data: CtIchData | None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_json(self) -> dict:
        """``{"ok", "counts", "patients": {id: {"n_slices", <label>: 0|1}}, "problems": [...]}``.

        ``counts`` holds the usable ``patients`` and ``slices``, the ``problems``, and the
        positives per label at patient and slice level (``positive_patients``,
        ``positive_slices``).
        """
        patients = {}
        pats = slices = None
        if self.data is not None:
            pats, slices = self.data.patients, self.data.slices
            for pid, row in pats.iterrows():
                patients[str(pid)] = {"n_slices": int(row["n_slices"]),
                                      **{lab: int(row[lab]) for lab in LABELS}}
        counts = {
            "patients": len(patients),
            "slices": 0 if slices is None else len(slices),
            "problems": len(self.problems),
            "positive_patients": {lab: 0 if pats is None else int(pats[lab].sum()) for lab in LABELS},
            "positive_slices": {lab: 0 if slices is None else int(slices[lab].sum()) for lab in LABELS},
        }
        return {
            "ok": self.ok,
            "counts": counts,
            "patients": patients,
            "problems": [{"path": p.path, "patient_id": p.patient_id, "problem": p.problem}
                         for p in self.problems],
        }

    def summary(self) -> str:
        """Human-readable summary: counts, positives per label, slice range, problems."""
        lines = [f"Dataset: {self.root}"]
        if self.data is not None and len(self.data.patients):
            pats, slices = self.data.patients, self.data.slices
            lines.append(f"  patients: {len(pats)}   slices: {len(slices)}   "
                         f"slices per scan: {pats['n_slices'].min()}-{pats['n_slices'].max()}")
            lines.append(f"  {'label':<18}{'patients+':>10}{'slices+':>10}")
            for lab in LABELS:
                lines.append(f"  {lab:<18}{int(pats[lab].sum()):>10}{int(slices[lab].sum()):>10}")
        else:
            lines.append("  no usable patients")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("No problems found.")
        return "\n".join(lines)


def check_dataset(root: str | os.PathLike, deep: bool = True, format: str = "auto") -> CheckReport:
    """Check a CT-ICH or RSNA 2019 folder and collect every problem.

    Args:
        root: The dataset folder.
        deep: Also read every scan's and mask's voxels (finds NaN/Inf, constant volumes,
            unreadable data). Header-level checks always run.
        format: ``"ct-ich"``, ``"rsna"`` (see :func:`ichlib.io.check.check_rsna`), or
            ``"auto"``: RSNA if the folder has ``stage_2_train.csv``, else CT-ICH.

    Returns:
        A :class:`CheckReport`. It never raises for problems inside the folder; a folder
        that cannot be read at all becomes a single problem.
    """
    root = Path(root)
    if format not in ("auto", "ct-ich", "rsna"):
        raise ValueError(f"format must be 'auto', 'ct-ich' or 'rsna', got {format!r}")
    if format == "auto":

        try:
            format = detect_format(root)
        except DataError:
            format = "ct-ich"  # the CT-ICH reader says exactly what is missing
    if format == "rsna":

        return check_rsna(root, deep=deep)
    try:
        data = read_ct_ich(root, on_error="skip")
    except DataError as exc:
        return CheckReport(root, None, [Problem(exc.path or str(root), exc.problem)])
    files = (lambda pid: [(data.scans[pid], load_volume), (data.masks[pid], load_mask)]) if deep else None
    return _deep_check(root, data, files)


def _deep_check(root: Path, data: CtIchData,
               files: Callable[[str], list[tuple[Path, Callable]]] | None) -> CheckReport:
    """Read every listed file of every patient; report failures and drop those patients.

    Args:
        root: The dataset folder.
        data: What the header-level reader kept (its ``problems`` are kept too).
        files: For a patient id, the ``(path, loader)`` pairs to read; None skips reading.
    """
    problems = list(data.problems)
    if files is not None:
        bad = []
        for pid in data.patient_ids:
            for path, loader in files(pid):
                try:
                    loader(path)
                except DataError as exc:
                    problems.append(Problem(exc.path or str(path), exc.problem, pid))
                    bad.append(pid)
                    break
        data.drop(bad)
        data.problems = problems
    return CheckReport(root, data, problems)


def check_rsna(root: str | os.PathLike, deep: bool = True, cache_dir: str | os.PathLike | None = None,
               workers: int | None = None) -> CheckReport:
    """Check an RSNA folder and collect every problem, like :func:`ichlib.io.check.check_dataset`.

    Args:
        root: The dataset folder.
        deep: Also decode every series (finds undecodable pixels, constant volumes);
            header-level checks always run.
        cache_dir: As for :func:`read_rsna`.
        workers: As for :func:`read_rsna`.

    Returns:
        A :class:`~ichlib.io.check.CheckReport` whose ``data`` is the usable part (an
        :class:`RsnaData`). It never raises for problems inside the folder.
    """
    root = Path(root)
    try:
        data = read_rsna(root, on_error="skip", cache_dir=cache_dir, workers=workers)
    except DataError as exc:
        return CheckReport(root, None, [Problem(exc.path or str(root), exc.problem)])
    files = (lambda uid: [(data.scans[uid], partial(load_dicom_series, non_dicom="raise"))]) if deep else None
    return _deep_check(root, data, files)
