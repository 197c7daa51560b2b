"""In-plane resizing of slice stacks."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ichlib.errors import ConfigError


def resize_slices(slices: np.ndarray | torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize ``[S, H, W]`` or ``[S, C, H, W]`` slices to ``size`` in-plane.

    Uses bilinear interpolation with antialiasing (``torch.nn.functional.interpolate``),
    so downsampling 512 -> 256 averages rather than aliases. Values are not clipped.

    Args:
        slices: A stack of slices as float array or tensor.
        size: Target ``H = W`` or ``(H, W)``.

    Returns:
        float32 tensor with the same leading dimensions and the new ``H, W``.
    """
    out_hw = (size, size) if isinstance(size, int) else tuple(size)
    if min(out_hw) < 1:
        raise ConfigError(f"image size must be positive, got {size}")
    x = torch.as_tensor(slices, dtype=torch.float32)
    if x.ndim not in (3, 4):
        raise ConfigError(f"expected [S, H, W] or [S, C, H, W], got shape {tuple(x.shape)}")
    squeeze = x.ndim == 3
    if squeeze:
        x = x.unsqueeze(1)
    if tuple(x.shape[-2:]) != out_hw:
        shrink = x.shape[-2] > out_hw[0] or x.shape[-1] > out_hw[1]
        x = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False, antialias=shrink)
    return x.squeeze(1) if squeeze else x


def resample_volume(hu: np.ndarray, img_size: int) -> np.ndarray:
    """Resize a HU volume ``[N, H, W]`` in-plane to ``img_size``; returns float32 numpy."""
    return resize_slices(hu, img_size).numpy()
