"""Numbers for data exploration: label counts, co-occurrence, HU statistics, window contrast."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from ichlib.ctich import CtIchData
from ichlib.labels import LABELS, SUBTYPES
from ichlib.windowing import resolve_windows, window


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


def head_mask(hu: np.ndarray, threshold: float = -300.0) -> np.ndarray:
    """Voxels inside the head: above ``threshold`` HU, holes filled per slice."""
    inside = hu > threshold
    return np.stack([ndimage.binary_fill_holes(s) for s in inside])


def brain_mask(hu: np.ndarray) -> np.ndarray:
    """Intracranial soft tissue: 0-100 HU, inside the head, away from the skull (eroded)."""
    soft = (hu > 0) & (hu < 100) & head_mask(hu)
    return np.stack([ndimage.binary_erosion(s, iterations=3) for s in soft])


def lesion_contrast(hu: np.ndarray, lesion: np.ndarray, reference: np.ndarray,
                    windows: Sequence[str | tuple[float, float]]) -> pd.DataFrame:
    """Lesion-to-reference contrast in each window.

    For each window, the mean windowed intensity inside ``lesion`` minus the mean inside
    ``reference`` (e.g. brain without lesion), and the contrast-to-noise ratio: that
    difference divided by the reference's standard deviation.

    Args:
        hu: HU values ``[..., H, W]``.
        lesion: Boolean mask of the lesion, same shape.
        reference: Boolean mask of the reference tissue, same shape.
        windows: Window names or ``(centre, width)`` pairs.

    Returns:
        Table indexed by window with columns ``lesion``, ``reference``, ``contrast``, ``cnr``.
    """
    if not lesion.any() or not reference.any():
        raise ValueError("lesion and reference masks must both be non-empty")
    names = [w if isinstance(w, str) else f"{w[0]:g}/{w[1]:g}" for w in windows]
    rows = []
    for (center, width) in resolve_windows(windows):
        w = window(hu, center, width)
        les, ref = float(w[lesion].mean()), float(w[reference].mean())
        sd = float(w[reference].std())
        rows.append({"lesion": les, "reference": ref, "contrast": les - ref,
                     "cnr": (les - ref) / sd if sd > 0 else float("nan")})
    return pd.DataFrame(rows, index=pd.Index(names, name="window")).round(3)
