"""Training-time augmentation of whole scans: one random draw, applied to every slice.

The BiLSTM reads the slices of a scan as a sequence, so a flip or a rotation must be the
same on all of them; otherwise the model would see a head that moves between slices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ichlib.errors import ConfigError


@dataclass(frozen=True)
class ScanAugment:
    """Random flip, rotation, shift and intensity change, identical for all slices of a scan.

    Called as ``augment(x, rng)`` on ``x [S, C, H, W]`` with values in [0, 1] (windowed
    slices). Six numbers are drawn from ``rng`` per call, always in the same order (flip,
    angle, shift x, shift y, scale, offset), so the result depends only on the generator's
    state. The geometry is one bilinear resampling (``grid_sample``) with
    zeros outside the image; then ``x * scale + offset``, clipped to [0, 1].

    Attributes:
        flip_p: Probability of a left-right flip.
        max_rotate: Largest rotation in degrees (uniform in ``±max_rotate``).
        max_shift: Largest shift as a fraction of the image size, per axis.
        max_scale: Intensity scale drawn in ``1 ± max_scale``.
        max_offset: Intensity offset drawn in ``± max_offset``.
    """

    flip_p: float = 0.5
    max_rotate: float = 10.0
    max_shift: float = 0.06
    max_scale: float = 0.1
    max_offset: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_p <= 1.0:
            raise ConfigError(f"flip_p must be in [0, 1], got {self.flip_p}")
        if min(self.max_rotate, self.max_shift, self.max_scale, self.max_offset) < 0:
            raise ConfigError("augmentation ranges must be >= 0")

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Augment one scan ``[S, C, H, W]``; returns a new float32 tensor of the same shape."""
        if x.ndim != 4:
            raise ConfigError(f"expected one scan [S, C, H, W], got shape {tuple(x.shape)}")
        flip = rng.random() < self.flip_p
        angle = math.radians(rng.uniform(-self.max_rotate, self.max_rotate))
        shift_x, shift_y = rng.uniform(-self.max_shift, self.max_shift, size=2)
        scale = rng.uniform(1.0 - self.max_scale, 1.0 + self.max_scale)
        offset = rng.uniform(-self.max_offset, self.max_offset)

        s, c, h, w = x.shape
        theta = _affine_matrix(angle, float(shift_x), float(shift_y), flip, h, w)
        grid = F.affine_grid(theta.expand(s, 2, 3), [s, c, h, w], align_corners=False)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return (out * scale + offset).clamp_(0.0, 1.0)


    def each(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Augment every item of ``x [N, C, H, W]`` with its own draw (single slices).

        Item ``i`` gets what ``self(x[i:i+1], rng)`` would give with the generator in the
        same state, but all items are resampled in one ``grid_sample`` call.
        """
        if x.ndim != 4:
            raise ConfigError(f"expected slices [N, C, H, W], got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        thetas, scales, offsets = [], [], []
        for _ in range(n):
            flip = rng.random() < self.flip_p
            angle = math.radians(rng.uniform(-self.max_rotate, self.max_rotate))
            shift_x, shift_y = rng.uniform(-self.max_shift, self.max_shift, size=2)
            scales.append(rng.uniform(1.0 - self.max_scale, 1.0 + self.max_scale))
            offsets.append(rng.uniform(-self.max_offset, self.max_offset))
            thetas.append(_affine_matrix(angle, float(shift_x), float(shift_y), flip, h, w))
        grid = F.affine_grid(torch.cat(thetas), [n, c, h, w], align_corners=False)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        scale = torch.tensor(scales, dtype=torch.float32).view(n, 1, 1, 1)
        offset = torch.tensor(offsets, dtype=torch.float32).view(n, 1, 1, 1)
        return (out * scale + offset).clamp_(0.0, 1.0)


def _affine_matrix(angle: float, shift_x: float, shift_y: float, flip: bool,
                  height: int, width: int) -> torch.Tensor:
    """The ``[1, 2, 3]`` sampling matrix for ``F.affine_grid`` (output -> input coordinates).

    The image is flipped left-right (optional), rotated by ``angle`` radians about its
    centre and shifted by ``shift_x * width`` and ``shift_y * height`` pixels. Rotation
    uses pixel units, so non-square images are not sheared.
    """
    cos, sin = math.cos(angle), math.sin(angle)
    aspect = width / height
    # In normalised coordinates x spans width and y spans height; rotate in pixel units.
    rotation = torch.tensor([[cos, -sin / aspect], [sin * aspect, cos]], dtype=torch.float64)
    # output point -> input point: undo the shift, undo the rotation, undo the flip.
    inverse = torch.linalg.inv(rotation)
    if flip:
        inverse = torch.diag(torch.tensor([-1.0, 1.0], dtype=torch.float64)) @ inverse
    shift = torch.tensor([2.0 * shift_x, 2.0 * shift_y], dtype=torch.float64)
    translation = -(inverse @ shift)
    return torch.cat([inverse, translation[:, None]], dim=1).unsqueeze(0).float()


#: The default training augmentation (flip, ±10°, ±6 % shift, ±10 % scale, ±0.05 offset).
augment = ScanAugment()
