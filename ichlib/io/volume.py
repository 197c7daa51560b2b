"""The CT volume ichlib works on, whatever file it came from, and the size limits of a scan.

Convention: ``Volume.hu[k]`` is slice ``k`` along the file's slice axis (NIfTI: the last
voxel axis, so CT-ICH's 1-based ``SliceNumber`` ``n`` is ``hu[n - 1]``; DICOM: sorted along
the slice normal). Readers: :mod:`ichlib.io.nifti`, :mod:`ichlib.io.dicom`, and the
dispatching :func:`ichlib.io.load.load_volume`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Largest volume accepted, in voxels (about 2 GiB as float32). Checked from the header,
#: before any voxel is read.
MAX_VOXELS = 512 * 1024 * 1024
#: Largest extent accepted along any one axis.
MAX_EXTENT = 8192



@dataclass(frozen=True)
class Volume:
    """A CT volume in Hounsfield units.

    Attributes:
        hu: float32 array ``[slices, H, W]``.
        spacing: Voxel size in mm as ``(slice, row, column)``.
        path: The file it came from, if any.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    path: Path | None = None

    @property
    def n_slices(self) -> int:
        """Number of slices along the file's last axis."""
        return int(self.hu.shape[0])


@dataclass(frozen=True)
class VolumeHeader:
    """What the header says, read without touching the voxels.

    Attributes:
        shape: ``(slices, H, W)`` in the :class:`Volume` convention.
        spacing: ``(slice, row, column)`` in mm.
        dtype: The on-disk voxel type.
        affine: The voxel-to-world matrix (NIfTI; None for DICOM).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    dtype: np.dtype
    affine: np.ndarray | None = None


def hu_problem(hu: np.ndarray) -> str | None:
    """Why a loaded volume cannot be used as Hounsfield units, or None.

    The one check every reader (NIfTI, DICOM) runs on its voxels: values that are NaN or
    Inf (never guessed), a constant volume (no image), and values all in [0, 1] (a
    normalised image or a mask, not CT: a head CT holds air near -1000 HU and bone above
    300 HU).
    """
    if not np.isfinite(hu).all():
        bad = int(np.size(hu) - np.count_nonzero(np.isfinite(hu)))
        return f"{bad} voxels are NaN or Inf; refusing to guess their HU"
    if hu.size and float(hu.min()) == float(hu.max()):
        return f"volume is constant ({float(hu.min()):g} everywhere); it holds no image"
    if hu.size and float(hu.min()) >= 0.0 and float(hu.max()) <= 1.0:
        return (f"all values lie in [{float(hu.min()):g}, {float(hu.max()):g}]: a normalised image or "
                "a mask, not Hounsfield units (a head CT holds air near -1000 HU)")
    return None

