"""How well a map points at the blood, scored on the scan's own grid, with intervals over patients.

Maps come at the model's resolution (a 4 x 4 ``layer4`` map at 128 px, say). They are resized
to the mask's native in-plane grid (:func:`to_grid`) before any score, so a coarse map is not
flattered by a coarse mask, and tolerances are in millimetres, from the voxel spacing.

Per slice with blood (an empty mask is not scored: NaN):

- **energy in mask**: the share of the map's mass inside the mask; 0 for a map with no mass.
- **energy in mask, inside the brain** (when the intracranial mask is given): the same for the
  map restricted to intracranial tissue, where a hemorrhage can be. Mass a coarse map spreads
  over scalp, bone and air is then neither hit nor miss; every map, the chance prior included,
  is restricted the same way, so the comparison asks whether the map finds the blood *within
  the brain* better than knowing the brain does.
- **pointing game**: whether the map's maximum lies in the mask grown by ``tolerance_mm``
  (Euclidean, in mm, with the slice's row and column spacing). When several pixels tie for
  the maximum, the score is the share of them inside: what picking one of them at random
  would score on average. A flat map therefore scores the grown mask's share of the slice,
  which is what a guess scores, and never a lucky 1.
- **Dice** of the map thresholded at ``t`` (maps are normalised across the scan to [0, 1]):
  ``2 |M ∩ B| / (|M| + |B|)``, the measure published CAM-versus-mask benchmarks on ICH report.
  The threshold is chosen on validation (:func:`choose_dice_threshold`), never on test.

:func:`score_table` pools the slices of every patient and puts a bootstrap interval over
patients on each mean (:func:`ichlib.training.metrics.bootstrap_mean`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from ichlib.errors import ConfigError
from ichlib.preprocess.resize import resize_slices
from ichlib.training.metrics import bootstrap_mean

#: Pointing-game tolerances reported, in mm (0 is the default score).
TOLERANCES_MM: tuple[float, ...] = (0.0, 5.0)
#: Thresholds of the scan-normalised map tried for Dice.
DICE_THRESHOLDS: tuple[float, ...] = tuple(round(t, 2) for t in np.arange(0.1, 1.0, 0.1))
_TIE = 1e-6


def to_grid(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Maps ``[S, h, w]`` resized bilinearly to the mask's grid ``shape = (H, W)``, clipped at 0."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ConfigError(f"maps must be [S, h, w], got shape {maps.shape}")
    if maps.shape[1:] == tuple(shape):
        return np.maximum(maps, 0.0)
    return np.maximum(resize_slices(maps, tuple(int(s) for s in shape)).numpy(), 0.0)


def energy_in_mask(cam: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Share of each slice's map mass inside its mask: float ``[S]`` (NaN: empty mask)."""
    return _energy(*_pair(cam, mask))


def _energy(cam: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """:func:`energy_in_mask` of a checked pair (:func:`_pair`)."""
    mass = cam.sum(axis=(1, 2), dtype=np.float64)
    inside = (cam * mask).sum(axis=(1, 2), dtype=np.float64)
    out = np.where(mass > 0, inside / np.where(mass > 0, mass, 1.0), 0.0)
    out[~mask.any(axis=(1, 2))] = np.nan
    return out


def pointing_game(cam: np.ndarray, mask: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0),
                  tolerance_mm: float = 0.0) -> np.ndarray:
    """Share of each slice's maximal pixels inside its mask grown by ``tolerance_mm``.

    Args:
        cam: Maps ``[S, H, W]`` on the mask's grid.
        mask: Boolean ``[S, H, W]``.
        spacing: ``(row, column)`` pixel size in mm (anisotropic spacing is honoured).
        tolerance_mm: How far outside the mask a maximum still counts, in mm.

    Returns:
        float ``[S]`` in [0, 1]: 1 for a unique maximum inside, 0 outside or for a map with
        no mass; NaN where the mask is empty.
    """
    cam, mask = _pair(cam, mask)
    if tolerance_mm < 0 or min(spacing) <= 0:
        raise ConfigError(f"tolerance_mm must be >= 0 and spacing positive, got {tolerance_mm}, {spacing}")
    return _pointing(cam, mask, grow_mask(mask, spacing, tolerance_mm))


def _pointing(cam: np.ndarray, mask: np.ndarray, grown: np.ndarray) -> np.ndarray:
    """:func:`pointing_game` of a checked pair, with the mask already grown."""
    peaks = cam.max(axis=(1, 2), keepdims=True)
    tied = (cam >= peaks - _TIE * np.maximum(peaks, 1e-30)) & (peaks > 0)
    n_tied = tied.sum(axis=(1, 2))
    out = np.where(n_tied > 0, (tied & grown).sum(axis=(1, 2)) / np.maximum(n_tied, 1), 0.0)
    out[~mask.any(axis=(1, 2))] = np.nan
    return out


def dice(cam: np.ndarray, mask: np.ndarray, threshold: float) -> np.ndarray:
    """Dice of ``cam >= threshold`` against the mask, per slice: float ``[S]`` (NaN: empty mask)."""
    return _dice(*_pair(cam, mask), threshold)


def _dice(cam: np.ndarray, mask: np.ndarray, threshold: float) -> np.ndarray:
    """:func:`dice` of a checked pair."""
    found = cam >= threshold
    overlap = (found & mask).sum(axis=(1, 2), dtype=np.float64)
    size = found.sum(axis=(1, 2), dtype=np.float64) + mask.sum(axis=(1, 2), dtype=np.float64)
    out = 2.0 * overlap / np.where(size > 0, size, 1.0)
    out[~mask.any(axis=(1, 2))] = np.nan
    return out


def grow_mask(mask: np.ndarray, spacing: tuple[float, float], tolerance_mm: float) -> np.ndarray:
    """Each slice's mask grown by ``tolerance_mm`` (Euclidean distance in mm, per slice)."""
    mask = np.asarray(mask, dtype=bool)
    if tolerance_mm == 0:
        return mask.copy()
    out = np.zeros_like(mask)
    for k, m in enumerate(mask):
        if m.any():
            out[k] = ndimage.distance_transform_edt(~m, sampling=spacing) <= tolerance_mm
    return out


def slice_scores(cam: np.ndarray, mask: np.ndarray, spacing: tuple[float, float],
                 tolerances: Sequence[float] = TOLERANCES_MM,
                 thresholds: Sequence[float] = DICE_THRESHOLDS,
                 brain: np.ndarray | None = None,
                 grown: dict[float, np.ndarray] | None = None) -> pd.DataFrame:
    """Every score of every slice with blood: one row per such slice.

    Args:
        cam: Maps ``[S, H, W]`` on the mask's grid (see :func:`to_grid`), normalised to [0, 1]
            across the scan.
        mask: Boolean ``[S, H, W]``.
        spacing: ``(row, column)`` in mm.
        brain: Boolean ``[S, H, W]`` intracranial mask; adds ``energy_in_brain``.
        grown: A cache of ``mask`` grown by each tolerance (:func:`grow_mask`), filled here
            when a tolerance is missing: pass the same dict for every map scored on the same
            slices, and each mask is grown once.

    Returns:
        Columns ``slice_pos``, ``energy`` (and ``energy_in_brain``), ``pointing_<t>mm`` per
        tolerance and ``dice@<threshold>`` per threshold; slices with an empty mask are left out.
    """
    cam, mask = _pair(cam, mask)
    if any(t < 0 for t in tolerances) or min(spacing) <= 0:
        raise ConfigError(f"tolerances must be >= 0 and spacing positive, got {list(tolerances)}, {spacing}")
    grown = {} if grown is None else grown
    rows = {"slice_pos": np.arange(len(cam)), "energy": _energy(cam, mask)}
    if brain is not None:
        brain = _pair(np.asarray(brain, dtype=np.float64), mask)[0]
        rows["energy_in_brain"] = _energy(cam * brain, mask)
    for t in tolerances:
        if t not in grown:
            grown[t] = grow_mask(mask, spacing, t)
        rows[pointing_column(t)] = _pointing(cam, mask, grown[t])
    for th in thresholds:
        rows[f"dice@{th:g}"] = _dice(cam, mask, th)
    table = pd.DataFrame(rows)
    return table[mask.any(axis=(1, 2))].reset_index(drop=True)


def pointing_column(tolerance_mm: float) -> str:
    """The records' column of the pointing game at ``tolerance_mm``."""
    return f"pointing_{tolerance_mm:g}mm"


def choose_dice_threshold(records: pd.DataFrame, by: str = "method") -> dict[str, float]:
    """The threshold with the highest mean Dice, per method, from validation records."""
    columns = [c for c in records.columns if c.startswith("dice@")]
    if not columns:
        raise ConfigError("the records have no dice@<threshold> columns")
    means = records.groupby(by)[columns].mean()
    return {name: float(row.idxmax().split("@")[1]) for name, row in means.iterrows()}


def score_table(records: pd.DataFrame, dice_thresholds: dict[str, float] | float = 0.5,
                n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """One row per method and label: pooled means over the slices with blood, with intervals.

    Args:
        records: :func:`slice_scores` rows with ``method``, ``label`` and ``patient_id``
            columns added.
        dice_thresholds: The threshold per method (from :func:`choose_dice_threshold` on
            validation), or one for all.
        n_boot: Bootstrap replicates; each resamples patients.

    Returns:
        Columns ``n_patients``, ``n_slices`` and, for ``energy`` (``energy_in_brain`` when the
        records have it), each pointing tolerance and ``dice``, the pooled mean and its ``_ci_low`` / ``_ci_high`` (percentile interval).
    """
    metrics = ["energy", *(["energy_in_brain"] if "energy_in_brain" in records else []),
               *[c for c in records.columns if c.startswith("pointing_")], "dice"]
    rows = []
    for (method, label), part in records.groupby(["method", "label"], sort=False):
        threshold = dice_thresholds if isinstance(dice_thresholds, float) else dice_thresholds[method]
        part = part.assign(dice=part[f"dice@{threshold:g}"])
        row = {"method": method, "label": label, "n_patients": part["patient_id"].nunique(),
               "n_slices": len(part), "dice_threshold": threshold}
        for metric in metrics:
            values = part[metric].to_numpy(dtype=np.float64)
            replicates = bootstrap_mean(values, part["patient_id"].to_numpy(), n_boot, seed)
            finite = replicates[np.isfinite(replicates)]
            low, high = (np.quantile(finite, [alpha / 2, 1 - alpha / 2]) if finite.size else (np.nan, np.nan))
            row.update({metric: float(values.mean()), f"{metric}_ci_low": float(low),
                        f"{metric}_ci_high": float(high)})
        rows.append(row)
    return pd.DataFrame(rows)


def _pair(cam: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam = np.asarray(cam, dtype=np.float64)
    mask = np.asarray(mask).astype(bool)
    if cam.ndim == 2:
        cam, mask = cam[None], mask[None]
    if cam.shape != mask.shape or cam.ndim != 3:
        raise ConfigError(f"map shape {cam.shape} and mask shape {mask.shape} must be the same [S, H, W]")
    if not np.isfinite(cam).all():
        raise ConfigError("the map holds NaN or Inf")
    return np.maximum(cam, 0.0), mask
