"""One entry point for reading a scan, whatever its format: NIfTI file or DICOM series.

A ``.nii``/``.nii.gz`` path is NIfTI (:mod:`ichlib.io.nifti`); a folder or a ``.series``
manifest is a DICOM series (:mod:`ichlib.io.dicom`). Both give the same
:class:`~ichlib.io.volume.Volume`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ichlib.io.dicom.series import load_dicom_series, read_dicom_series_header
from ichlib.io.nifti import is_nifti_name, load_nifti, load_nifti_mask, read_nifti_header
from ichlib.io.volume import Volume, VolumeHeader


def read_header(path: str | os.PathLike, mask: bool = False) -> VolumeHeader:
    """Read and validate a scan's (or a NIfTI mask's) header without reading any voxel.

    Args:
        path: A NIfTI file, a DICOM series folder or a ``.series`` manifest.
        mask: A NIfTI mask rather than a CT scan (any voxel type is allowed).

    Raises:
        DataError: If the path is not a readable 3D volume of a sane size.
    """
    if is_dicom_series(path):
        return read_dicom_series_header(path)
    return read_nifti_header(path, mask=mask)


def load_volume(path: str | os.PathLike) -> Volume:
    """Load a CT scan as float32 HU ``[slices, H, W]``.

    NIfTI: ``scl_slope``/``scl_inter`` are applied; the volume must be 3D (a trailing axis
    of length 1 is dropped), finite, and not constant. A folder or a ``.series`` manifest
    is a DICOM series (:func:`~ichlib.io.dicom.load_dicom_series`).

    Raises:
        DataError: Naming the file and the problem: missing, empty, truncated, not NIfTI,
            not 3D, implausibly large (refused before allocation), NaN/Inf, or constant.
    """
    if is_dicom_series(path):
        return load_dicom_series(path)
    return load_nifti(path)


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Load a NIfTI hemorrhage mask as a boolean array ``[slices, H, W]`` (nonzero = blood).

    Raises:
        DataError: If the file is not a readable 3D NIfTI volume or holds NaN/Inf.
    """
    return load_nifti_mask(path)


def is_dicom_series(path: str | os.PathLike) -> bool:
    """A ``.series`` manifest, or a folder (not one misnamed as a NIfTI file)."""
    path = Path(path)
    return path.suffix == ".series" or (path.is_dir() and not is_nifti_name(path))
