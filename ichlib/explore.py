"""Looking at a dataset before training: the analysis of the course's first notebooks.

Each function here replaces a loop a notebook used to spell out, under a name that says what
it measures:

- :func:`subtype_alone`: the slices that show one subtype and no other;
- :func:`lesion_slice`: the slice that shows a subtype best, read with its mask;
- :func:`slice_at_height`: one slice of a scan at a given height, with its mask;
- :func:`window_table`: the CT windows as centre, width and the HU range they span;
- :func:`hu_samples`: HU inside each subtype's mask and in the brain around it;
- :func:`contrast_per_window`: lesion-to-brain contrast per CT window, over patients;
- :func:`example_scan`: the scan the notebooks use as their example;
- :func:`fracture_table`: how the ``fracture`` column goes with epidural blood.

All take the tables of :func:`ichlib.io.read_ct_ich` or :func:`ichlib.io.read_rsna`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ichlib.errors import ConfigError
from ichlib.io.load import load_mask, load_volume
from ichlib.io.tables import CtIchData, largest_lesion_slice
from ichlib.labels import LABELS, SUBTYPES
from ichlib.preprocess.hu import intracranial_mask
from ichlib.preprocess.windowing import WINDOWS, lesion_contrast

#: The reference tissue in :func:`hu_samples`: intracranial voxels outside every mask.
BRAIN = "brain (no blood)"


def subtype_alone(labels: np.ndarray | pd.DataFrame, subtype: str) -> np.ndarray:
    """Which slices are labelled with ``subtype`` and with no other subtype.

    CT-ICH masks mark all the blood on a slice without saying which subtype it is, so the
    voxels of one subtype can be read only on slices where it is the only one.

    Args:
        labels: Slice labels ``[slices, 6]`` in :data:`~ichlib.labels.LABELS` order (as
            ``data.slice_labels(pid)`` gives them), or a table with the five subtype columns.
        subtype: One of :data:`~ichlib.labels.SUBTYPES`.

    Returns:
        Boolean ``[slices]``.
    """
    if subtype not in SUBTYPES:
        raise ConfigError(f"unknown subtype {subtype!r}; use one of {', '.join(SUBTYPES)}")
    if isinstance(labels, pd.DataFrame):
        values = labels[list(SUBTYPES)].to_numpy()
    else:
        values = np.asarray(labels)[:, 1:]
    values = values != 0
    return values[:, SUBTYPES.index(subtype)] & (values.sum(axis=1) == 1)


def patients_with_subtype_alone(data: CtIchData, subtype: str) -> list[str]:
    """Patients with at least one slice labelled with ``subtype`` alone, in table order."""
    rows = data.slices[subtype_alone(data.slices, subtype)]
    return list(dict.fromkeys(rows["patient_id"]))


@dataclass(frozen=True)
class ScanSlice:
    """One slice of one scan, with its mask.

    Attributes:
        patient_id: The patient (or series).
        slice_number: 1-based ``SliceNumber``; the slice is ``hu[slice_number - 1]``.
        n_slices: Slices in the scan.
        hu: HU values ``[H, W]``.
        mask: Hemorrhage mask ``[H, W]`` (bool; all False when the scan has no mask).
        subtype: The label it was chosen for ("" when chosen by height).
    """

    patient_id: str
    slice_number: int
    n_slices: int
    hu: np.ndarray
    mask: np.ndarray
    subtype: str


def slice_at_height(data: CtIchData, patient_id: str, height: float = 0.5) -> ScanSlice:
    """The slice at ``height`` of a scan (0: first slice, 1: last), with its mask.

    Args:
        data: The dataset.
        patient_id: The patient (or series).
        height: Fraction of the scan's slices below the one returned, in [0, 1].
    """
    if not 0.0 <= height <= 1.0:
        raise ConfigError(f"height must be in [0, 1], got {height}")
    hu = load_volume(data.scans[patient_id]).hu
    k = min(int(height * hu.shape[0]), hu.shape[0] - 1)
    path = data.masks.get(patient_id)
    mask = load_mask(path)[k] if path is not None else np.zeros(hu.shape[1:], dtype=bool)
    return ScanSlice(patient_id, k + 1, hu.shape[0], hu[k], mask, "")


def lesion_slice(data: CtIchData, subtype: str, fallback: str | None = None) -> ScanSlice | None:
    """The slice with the largest mask among slices showing ``subtype`` alone, read from disk.

    Args:
        data: The dataset (with masks).
        subtype: A subtype, or ``"any"``.
        fallback: Another label to try when no slice shows ``subtype`` (e.g. ``"any"``).

    Returns:
        The slice, or None when neither label has a slice with a mask.
    """
    for label in (subtype, fallback):
        found = largest_lesion_slice(data, label) if label else None
        if found is not None:
            pid, number = found
            hu = load_volume(data.scans[pid]).hu
            mask = load_mask(data.masks[pid])
            return ScanSlice(pid, number, hu.shape[0], hu[number - 1], mask[number - 1], label)
    return None


def hu_samples(data: CtIchData, n_scans: int = 4, n_voxels: int = 2000, seed: int = 0) -> pd.DataFrame:
    """HU values inside each subtype's mask, and in the intracranial tissue around them.

    For each subtype, up to ``n_scans`` patients with slices showing that subtype alone
    (:func:`subtype_alone`); from each, up to ``n_voxels`` random voxels of the mask on those
    slices. :data:`BRAIN` is sampled the same way from every scan read: intracranial voxels
    (:func:`~ichlib.preprocess.hu.intracranial_mask`) outside the mask.

    Returns:
        Columns ``tissue``, ``HU``, ``patient_id``. A subtype no slice shows alone has no rows:
        see :func:`absent_tissues`.
    """
    if n_scans < 1 or n_voxels < 1:
        raise ConfigError(f"n_scans and n_voxels must be >= 1, got {n_scans} and {n_voxels}")
    rng = np.random.default_rng(seed)
    chosen = {s: patients_with_subtype_alone(data, s)[:n_scans] for s in SUBTYPES}
    rows = []
    for pid in dict.fromkeys(p for pids in chosen.values() for p in pids):
        hu = load_volume(data.scans[pid]).hu
        mask = load_mask(data.masks[pid])
        labels = data.slice_labels(pid)
        brain = hu[intracranial_mask(hu) & ~mask]
        rows.append(_sample(BRAIN, brain, pid, n_voxels, rng))
        for subtype in (s for s, pids in chosen.items() if pid in pids):
            alone = subtype_alone(labels, subtype)
            rows.append(_sample(subtype, hu[alone][mask[alone]], pid, n_voxels, rng))
    if not rows:
        return pd.DataFrame({"tissue": pd.Series(dtype=str), "HU": pd.Series(dtype=float),
                             "patient_id": pd.Series(dtype=str)})
    return pd.concat(rows, ignore_index=True)


def _sample(tissue: str, values: np.ndarray, pid: str, n: int, rng: np.random.Generator) -> pd.DataFrame:
    picked = rng.choice(values, min(n, values.size), replace=False) if values.size else values
    return pd.DataFrame({"tissue": tissue, "HU": picked.astype(float), "patient_id": pid})


def absent_tissues(samples: pd.DataFrame) -> list[str]:
    """The subtypes with no voxels in a :func:`hu_samples` table, in label order."""
    present = set(samples["tissue"])
    return [s for s in SUBTYPES if s not in present]


def window_table(windows: dict[str, tuple[float, float]] | None = None) -> pd.DataFrame:
    """The CT windows as a table: ``centre``, ``width`` and the HU range ``low``..``high`` that
    spans the grey scale (below ``low`` is black, above ``high`` white).

    Args:
        windows: ``{name: (centre, width)}``; None for
            :data:`~ichlib.preprocess.windowing.WINDOWS`.
    """
    windows = WINDOWS if windows is None else windows
    table = pd.DataFrame(windows, index=["centre", "width"]).T
    table["low"] = table["centre"] - table["width"] / 2
    table["high"] = table["centre"] + table["width"] / 2
    table.index.name = "window (HU)"
    return table


def contrast_per_window(data: CtIchData, windows: Sequence[str | tuple[float, float]] | None = None,
                        max_patients: int | None = 40) -> pd.DataFrame:
    """Lesion-to-brain contrast in each window, per patient with blood.

    For each patient with ``any`` (up to ``max_patients``), on the slices whose mask is not
    empty: :func:`~ichlib.preprocess.windowing.lesion_contrast` of the mask against the
    intracranial tissue outside it.

    Args:
        data: The dataset (with masks).
        windows: Window names or ``(centre, width)`` pairs; None for every window in
            :data:`~ichlib.preprocess.windowing.WINDOWS`.
        max_patients: At most this many patients (None: all).

    Returns:
        One row per patient and window: ``window``, ``lesion``, ``reference``, ``contrast``,
        ``cnr``, ``patient_id``.
    """
    windows = list(WINDOWS) if windows is None else list(windows)
    positive = list(data.patients.index[data.patients["any"] == 1])[:max_patients]
    tables = []
    for pid in positive:
        hu = load_volume(data.scans[pid]).hu
        mask = load_mask(data.masks[pid])
        with_blood = mask.reshape(len(mask), -1).any(axis=1)
        if not with_blood.any():
            continue
        hu, mask = hu[with_blood], mask[with_blood]
        reference = intracranial_mask(hu) & ~mask
        if reference.any():
            tables.append(lesion_contrast(hu, mask, reference, windows).assign(patient_id=pid))
    columns = ["window", "lesion", "reference", "contrast", "cnr", "patient_id"]
    if not tables:
        return pd.DataFrame(columns=columns)
    return pd.concat(tables).reset_index()[columns]


def example_scan(patients: pd.DataFrame) -> str:
    """The course's example scan: the longest scan with blood (``any``), else the longest.

    Args:
        patients: A patient (or series) table with ``n_slices`` and ``any``.
    """
    if patients.empty:
        raise ConfigError("the patient table is empty")
    positive = patients[patients["any"] == 1]
    return str((positive if len(positive) else patients)["n_slices"].idxmax())


def fracture_table(slices: pd.DataFrame) -> pd.DataFrame:
    """Slices with and without a skull fracture, against epidural blood (counts).

    CT-ICH marks a fracture per slice (``Fracture_Yes_No``, read as ``fracture``). It is not a
    hemorrhage label, but a fracture is how an epidural bleed usually starts.
    """
    table = pd.crosstab(slices["fracture"].map({0: "no fracture", 1: "fracture"}),
                        slices["epidural"].map({0: "no epidural", 1: "epidural"}))
    table = table.reindex(index=["no fracture", "fracture"], columns=["no epidural", "epidural"],
                          fill_value=0)
    table.index.name, table.columns.name = "slices", None
    return table


def label_names(row: np.ndarray | Sequence[int]) -> list[str]:
    """The subtypes set in one row of slice labels (``[6]``, :data:`~ichlib.labels.LABELS`)."""
    return [name for name, value in zip(LABELS, row) if name != "any" and value]
