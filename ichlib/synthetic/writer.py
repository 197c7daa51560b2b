"""Writing the phantom as a dataset folder in the PhysioNet CT-ICH 1.3.1 layout: NIfTI scans
and masks, both CSVs, a README and ``synthetic.json``, one patient per worker process."""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ichlib.errors import ConfigError, DataError
from ichlib.io.atomic import atomic_write_text
from ichlib.io.nifti import save_mask, save_volume
from ichlib.labels import CT_ICH_COLUMNS, CT_ICH_CSV_COLUMNS, SUBTYPES
from ichlib.synthetic.phantom import make_phantom
from ichlib.version import __version__

#: CT-ICH 1.3.1's patient numbers: 049-058 and 066-130 (75 patients).
CT_ICH_IDS: tuple[int, ...] = (*range(49, 59), *range(66, 131))


#: Prevalence in CT-ICH: 36 of 75 patients positive, and patients with each subtype.
_P_POSITIVE = 36 / 75


_SUBTYPE_COUNTS = {"epidural": 21, "intraparenchymal": 16, "subdural": 4, "subarachnoid": 7,
                   "intraventricular": 5}


_PATIENT_ID_LIMIT = 999


def patient_ids(n_patients: int) -> list[int]:
    """Patient numbers for ``n_patients`` synthetic patients.

    75 patients get CT-ICH's own numbers (049-058, 066-130), so code written against the
    real folder finds the same IDs. Any other count gets 1..n.

    Raises:
        ConfigError: If ``n_patients`` is not in 1..999 (IDs are three digits).
    """
    if not 1 <= n_patients <= _PATIENT_ID_LIMIT:
        raise ConfigError(f"n_patients must be 1..{_PATIENT_ID_LIMIT}, got {n_patients}")
    if n_patients == len(CT_ICH_IDS):
        return list(CT_ICH_IDS)
    return list(range(1, n_patients + 1))


def plan_subtypes(n_patients: int, seed: int = 0) -> list[tuple[str, ...]]:
    """Draw which subtypes each patient has, with CT-ICH's prevalence.

    About half the patients are positive; given positive, each subtype is drawn with its
    CT-ICH frequency (epidural and intraparenchymal commonest). With 10 or more patients,
    every subtype appears at least once and there is at least one negative patient, so any
    reasonable split has positives of each kind.
    """
    rng = np.random.default_rng([seed, 7919])
    names = list(_SUBTYPE_COUNTS)
    p_given_pos = np.array([_SUBTYPE_COUNTS[s] for s in names]) / (_P_POSITIVE * 75)
    plan: list[set[str]] = []
    for _ in range(n_patients):
        chosen: set[str] = set()
        if rng.random() < _P_POSITIVE:
            chosen = {s for s, p in zip(names, p_given_pos) if rng.random() < p}
            if not chosen:
                chosen = {names[int(rng.choice(len(names), p=p_given_pos / p_given_pos.sum()))]}
        plan.append(chosen)
    if n_patients >= 10:
        _ensure_coverage(plan, names, rng)
    return [tuple(s for s in SUBTYPES if s in chosen) for chosen in plan]


def write_synthetic_ct_ich(out_dir: str | os.PathLike, n_patients: int = 75, size: int = 512,
                           seed: int = 0, n_slices_range: tuple[int, int] = (28, 58),
                           workers: int | None = None) -> Path:
    """Write a synthetic dataset in the exact PhysioNet CT-ICH 1.3.1 layout.

    Writes ``ct_scans/NNN.nii`` and ``masks/NNN.nii`` (through
    :func:`~ichlib.io.nifti.save_volume` and :func:`~ichlib.io.nifti.save_mask`),
    ``hemorrhage_diagnosis_raw_ct.csv``, ``Patient_demographics.csv`` (two-row header),
    ``README.md`` and, last, ``synthetic.json``: its presence means the folder is complete.
    IDs come from :func:`patient_ids`. Each patient's generator is seeded from
    ``(seed, patient number)``, so the bytes do not depend on ``workers``.

    Args:
        out_dir: Destination folder (created). A folder that holds CT files but was not
            written by this function is refused rather than overwritten.
        n_patients: Number of patients (75 gives CT-ICH's IDs).
        size: In-plane size in pixels.
        seed: Master seed.
        n_slices_range: Inclusive range of the number of slices per patient.
        workers: Processes (default: all cores; 1 runs in this process).

    Returns:
        The output folder.
    """
    out = Path(out_dir)
    ids = patient_ids(n_patients)
    lo, hi = n_slices_range
    if not 8 <= lo <= hi:
        raise ConfigError(f"n_slices_range must satisfy 8 <= lo <= hi, got {n_slices_range}")
    _prepare_folder(out, ids)
    atomic_write_text(out / "README.md", _readme(n_patients, size, seed, n_slices_range))
    plan = plan_subtypes(n_patients, seed)
    tasks = [(out, pid, seed, size, n_slices_range, sub) for pid, sub in zip(ids, plan)]
    workers = max(1, min(workers or os.cpu_count() or 1, n_patients))
    if workers == 1:
        records = [_write_patient(task) for task in tasks]
    else:   # biggest scans first, so no worker is left with a long one at the end
        order = sorted(range(n_patients), key=lambda i: -_n_slices(seed, ids[i], n_slices_range))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            done = dict(zip(order, pool.map(_write_patient, [tasks[i] for i in order])))
        records = [done[i] for i in range(n_patients)]
    atomic_write_text(out / "hemorrhage_diagnosis_raw_ct.csv", _slice_csv(records))
    atomic_write_text(out / "Patient_demographics.csv", _demographics_csv(records))
    meta = {"synthetic": True, "generator": "ichlib.synthetic.phantom.write_synthetic_ct_ich",
            "ichlib_version": _version(), "seed": seed, "size": size, "n_patients": n_patients,
            "n_slices_range": list(n_slices_range), "patient_ids": [f"{i:03d}" for i in ids]}
    atomic_write_text(out / "synthetic.json", _json(meta))
    return out


@dataclass(frozen=True)
class _Record:
    """What the parent needs from a written patient for the CSV files."""

    pid: int
    slice_labels: dict[str, np.ndarray]
    fracture: np.ndarray
    age: int
    sex: str
    notes: tuple[str, ...]


def _patient_rng(seed: int, pid: int, n_slices_range: tuple[int, int]
                 ) -> tuple[np.random.Generator, int]:
    """The patient's own generator (from seed and patient number) and its slice count."""
    rng = np.random.default_rng([seed, pid])
    lo, hi = n_slices_range
    return rng, int(rng.integers(lo, hi + 1))


def _n_slices(seed: int, pid: int, n_slices_range: tuple[int, int]) -> int:
    """The patient's slice count, as :func:`_write_patient` will draw it."""
    return _patient_rng(seed, pid, n_slices_range)[1]


def _write_patient(task: tuple) -> _Record:
    """Make one patient and write its scan and mask (runs in a worker process)."""
    out, pid, seed, size, n_slices_range, subtypes = task
    rng, n_slices = _patient_rng(seed, pid, n_slices_range)
    ph = make_phantom(rng, size=size, n_slices=n_slices, subtypes=subtypes)
    save_volume(out / "ct_scans" / f"{pid:03d}.nii", ph.hu, spacing=ph.spacing)
    save_mask(out / "masks" / f"{pid:03d}.nii", ph.mask, spacing=ph.spacing)
    return _Record(pid, ph.slice_labels, ph.fracture, ph.age, ph.sex, tuple(ph.notes))


def _prepare_folder(out: Path, ids: list[int]) -> None:
    """Create the folders; refuse foreign data; drop stale files of an earlier synthetic run."""
    existing = [p for sub in ("ct_scans", "masks") if (out / sub).is_dir()
                for p in (out / sub).glob("*.nii*")]
    readme = out / "README.md"
    ours = (out / "synthetic.json").exists() or (
        readme.exists() and "SYNTHETIC" in readme.read_text(encoding="utf-8", errors="replace"))
    if existing and not ours:
        raise DataError(out, "holds CT scans that ichlib did not generate; refusing to overwrite "
                             "them (choose an empty folder for the synthetic data)")
    (out / "synthetic.json").unlink(missing_ok=True)
    keep = {f"{i:03d}.nii" for i in ids}
    for sub in ("ct_scans", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for path in (out / sub).iterdir():
            if re.fullmatch(r"\d{3}\.nii", path.name) and path.name not in keep:
                path.unlink()


def _slice_csv(records: list[_Record]) -> str:
    """``hemorrhage_diagnosis_raw_ct.csv``: one row per slice, labels from the masks."""
    lines = [",".join(CT_ICH_CSV_COLUMNS)]
    column_of = {col: sub for sub, col in CT_ICH_COLUMNS.items()}
    for rec in records:
        for k in range(len(rec.fracture)):
            vals = {col: int(rec.slice_labels[sub][k]) for col, sub in column_of.items()}
            vals["No_Hemorrhage"] = int(not any(vals.values()))
            vals["Fracture_Yes_No"] = int(rec.fracture[k])
            vals["PatientNumber"], vals["SliceNumber"] = rec.pid, k + 1
            lines.append(",".join(str(vals[c]) for c in CT_ICH_CSV_COLUMNS))
    return "\n".join(lines) + "\n"


def _demographics_csv(records: list[_Record]) -> str:
    """``Patient_demographics.csv`` with CT-ICH's two-row header (group, then column)."""
    cols = [c for c in CT_ICH_CSV_COLUMNS if c in CT_ICH_COLUMNS.values()]
    group = "Hemorrhage type based on the radiologist diagnosis"
    top = ["Patient Number", "Age (years)", "Gender", group] + [""] * (len(cols) - 1)
    top += ["Fracture (yes 1/no 0)", "Note"]
    second = ["", "", "", *cols, "", ""]
    lines = [",".join(top), ",".join(second)]
    sub_of = {col: sub for sub, col in CT_ICH_COLUMNS.items()}
    for rec in records:
        flags = [str(int(rec.slice_labels[sub_of[c]].any())) for c in cols]
        note = "; ".join(rec.notes) if rec.notes else "normal"
        lines.append(",".join([str(rec.pid), str(rec.age), rec.sex, *flags,
                               str(int(rec.fracture.any())), f'"synthetic: {note}"']))
    return "\n".join(lines) + "\n"


def _readme(n_patients: int, size: int, seed: int, n_slices_range: tuple[int, int]) -> str:
    """The dataset's README, which says plainly that the data are synthetic."""
    return (
        "# SYNTHETIC head-CT data (not patient data)\n\n"
        f"Generated by ichlib {_version()} (`ichlib.synthetic.phantom.write_synthetic_ct_ich`) with "
        f"seed={seed}, size={size}, n_patients={n_patients}, "
        f"n_slices_range={tuple(n_slices_range)}.\n\n"
        "It mimics the file layout of PhysioNet CT-ICH 1.3.1 (`ct_scans/`, `masks/`, "
        "`hemorrhage_diagnosis_raw_ct.csv`, `Patient_demographics.csv`), but every volume is "
        "an analytic phantom: no patient data is used or reproduced. Results on it say "
        "nothing about clinical performance.\n\n"
        "`synthetic.json` is written last; if it is missing, the folder is incomplete.\n")


def _json(meta: dict) -> str:
    """Pretty JSON with a final newline."""
    return json.dumps(meta, indent=2) + "\n"


def _version() -> str:
    """ichlib's version, for the phantom's ``synthetic.json``."""
    return __version__


def _ensure_coverage(plan: list[set[str]], names: list[str], rng: np.random.Generator) -> None:
    """Give every missing subtype to a patient, and keep at least one negative patient."""
    if all(plan):
        plan[int(rng.integers(len(plan)))].clear()
    for name in names:
        if not any(name in chosen for chosen in plan):
            positives = [i for i, chosen in enumerate(plan) if chosen]
            pool = positives if positives else list(range(1, len(plan)))
            plan[pool[int(rng.integers(len(pool)))]].add(name)
