"""Clinical CT windows: map Hounsfield units to [0, 1] intensities.

A window with centre ``c`` and width ``w`` maps ``c - w/2`` to 0 and ``c + w/2`` to 1,
linearly, and clips outside. This is MONAI's ``ScaleIntensityRange(a_min=c - w/2,
a_max=c + w/2, b_min=0, b_max=1, clip=True)``. (The DICOM PS3.3 VOI LUT formula shifts
the ends by half a unit; the difference is below 1/w and is ignored here.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ichlib.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

#: Window presets as ``(centre, width)`` in HU. ``soft`` is the paper's third channel.
WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "soft": (40.0, 380.0),
    "bone": (600.0, 2800.0),
}

ArrayLike = np.ndarray | torch.Tensor


def window(hu: ArrayLike, center: float, width: float) -> ArrayLike:
    """Window HU values into float32 intensities in [0, 1].

    Args:
        hu: HU values, any shape (numpy array or torch tensor).
        center: Window centre (level) in HU.
        width: Window width in HU, > 0.

    Returns:
        float32 values of the same shape and kind as ``hu``; below the window gives 0,
        above it gives 1. NaN input stays NaN (volumes with NaN are refused at load time).
    """
    if not width > 0:
        raise ConfigError(f"window width must be > 0, got {width}")
    low = center - width / 2.0
    if isinstance(hu, torch.Tensor):
        return ((hu.float() - low) / width).clamp_(0.0, 1.0)
    return np.clip((np.asarray(hu, dtype=np.float32) - np.float32(low)) / np.float32(width),
                   0.0, 1.0).astype(np.float32, copy=False)


def resolve_windows(windows: Sequence[str | tuple[float, float]] | str) -> list[tuple[float, float]]:
    """Turn window names (or explicit ``(centre, width)`` pairs) into ``(centre, width)`` pairs.

    Raises:
        ConfigError: On an unknown name or an empty list.
    """
    if isinstance(windows, str):
        windows = [w.strip() for w in windows.split(",") if w.strip()]
    pairs: list[tuple[float, float]] = []
    for w in windows:
        if isinstance(w, str):
            if w not in WINDOWS:
                raise ConfigError(f"unknown window {w!r}; known: {', '.join(WINDOWS)}")
            pairs.append(WINDOWS[w])
        else:
            center, width = w
            pairs.append((float(center), float(width)))
    if not pairs:
        raise ConfigError("at least one window is needed")
    return pairs


def multi_window(hu: ArrayLike, windows: Sequence[str | tuple[float, float]] | str) -> ArrayLike:
    """Stack several windows as channels.

    Args:
        hu: ``[..., H, W]`` HU values; typically ``[S, H, W]``.
        windows: Window names from :data:`WINDOWS` or ``(centre, width)`` pairs.

    Returns:
        ``[..., C, H, W]`` float32 with one channel per window, in the order given.
    """
    channels = [window(hu, c, w) for c, w in resolve_windows(windows)]
    if isinstance(hu, torch.Tensor):
        return torch.stack(channels, dim=-3)
    return np.stack(channels, axis=-3)


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
    import pandas as pd  # lazy: start-up time (ichlib predict windows scans without pandas)

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
