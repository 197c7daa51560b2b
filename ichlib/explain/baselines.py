"""Maps that know no model, to bracket what Grad-CAM scores.

- :func:`chance_prior`: where the brain is, at the CAM's own grid, and nothing else. A map
  that points there scores what knowing the anatomy alone scores; an explanation must beat it
  to show the model looked at the blood.
- :func:`intensity_map`: the acute-blood HU band inside the skull, smoothed. It needs no
  learning and knows the physics of fresh blood, so it is an upper reference on acute bleeds
  (and fails on old blood, which is not dense).

Both are normalised across the scan to [0, 1], like Grad-CAM's scan normalisation, and come
on the grid of the HU they are given.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ichlib.errors import ConfigError
from ichlib.preprocess.hu import BLOOD_HU, in_band, intracranial_mask
from ichlib.preprocess.resize import resize_slices


def chance_prior(hu: np.ndarray, grid: tuple[int, int], brain: np.ndarray | None = None) -> np.ndarray:
    """Brain occupancy at the CAM's grid: the share of each grid cell that is intracranial tissue.

    Args:
        hu: HU slices ``[S, H, W]`` (the scan's own grid).
        grid: The CAM's grid ``(h, w)`` (e.g. ``(4, 4)`` for ``layer4`` at 128 px).
        brain: :func:`~ichlib.preprocess.hu.intracranial_mask` of ``hu`` when already computed.

    Returns:
        float32 ``[S, H, W]``: each cell's occupancy (area average of
        :func:`~ichlib.preprocess.hu.intracranial_mask`), brought back to ``(H, W)``
        bilinearly like a CAM, divided by its maximum over the scan.
    """
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 3:
        raise ConfigError(f"HU must be [S, H, W], got shape {hu.shape}")
    brain = intracranial_mask(hu) if brain is None else _same_shape(brain, hu)
    cells = F.adaptive_avg_pool2d(torch.from_numpy(brain.astype(np.float32))[:, None],
                                  tuple(int(g) for g in grid))[:, 0]
    return _normalize(resize_slices(cells, hu.shape[1:]).numpy())


def intensity_map(hu: np.ndarray, band: tuple[float, float] = BLOOD_HU, sigma_px: float = 2.0,
                  brain: np.ndarray | None = None) -> np.ndarray:
    """The blood HU band inside the skull, smoothed: float32 ``[S, H, W]`` in [0, 1].

    The indicator ``band[0] <= HU <= band[1]`` restricted to intracranial tissue (bone and
    the partial-volume rim next to it, scalp and air are out) is smoothed in-plane with a
    Gaussian of ``sigma_px`` pixels and divided by its maximum over the scan; zeros if no
    voxel is in the band. ``brain``: the intracranial mask of ``hu`` when already computed.
    """
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 3:
        raise ConfigError(f"HU must be [S, H, W], got shape {hu.shape}")
    brain = intracranial_mask(hu) if brain is None else _same_shape(brain, hu)
    indicator = (in_band(hu, band) & brain).astype(np.float32)
    if sigma_px > 0:
        indicator = ndimage.gaussian_filter(indicator, sigma=(0, sigma_px, sigma_px), mode="constant")
    return _normalize(indicator)


def _same_shape(brain: np.ndarray, hu: np.ndarray) -> np.ndarray:
    brain = np.asarray(brain, dtype=bool)
    if brain.shape != hu.shape:
        raise ConfigError(f"brain mask shape {brain.shape} differs from the HU's {hu.shape}")
    return brain


def _normalize(maps: np.ndarray) -> np.ndarray:
    maps = np.maximum(np.asarray(maps, dtype=np.float32), 0.0)
    top = float(maps.max()) if maps.size else 0.0
    return maps / top if top > 0 else np.zeros_like(maps)
