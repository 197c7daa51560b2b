"""Reading and writing CT volumes and hemorrhage masks stored as NIfTI.

Convention: a :class:`Volume` holds ``hu[k]`` = the file's slice ``k`` along its **last**
voxel axis, so CT-ICH's 1-based ``SliceNumber`` ``n`` is ``hu[n - 1]``. Within a slice,
rows follow the file's second voxel axis and columns its first (``data[:, :, k].T``).
No reorientation to RAS happens, because that could reverse the slice axis and silently
mislabel every slice.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ichlib.atomic import atomic_path
from ichlib.errors import DataError

#: Largest volume accepted, in voxels (about 2 GiB as float32). Checked from the header,
#: before any voxel is read.
MAX_VOXELS = 512 * 1024 * 1024
#: Largest extent accepted along any one axis.
MAX_EXTENT = 8192

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


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
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    dtype: np.dtype


def read_header(path: str | os.PathLike) -> VolumeHeader:
    """Read and validate a NIfTI header without reading any voxel.

    A folder or a ``.series`` manifest is a DICOM series: see
    :func:`ichlib.dicom.read_dicom_series_header`.

    Raises:
        DataError: If the path is not a readable 3D NIfTI volume of a sane size.
    """
    if _is_dicom_series(Path(path)):
        from ichlib.dicom import read_dicom_series_header

        return read_dicom_series_header(path)
    img = _open_nifti(Path(path))
    return _header_of(img, Path(path))


def load_volume(path: str | os.PathLike) -> Volume:
    """Load a CT volume (``.nii`` or ``.nii.gz``) as float32 HU ``[slices, H, W]``.

    ``scl_slope``/``scl_inter`` are applied. The volume must be 3D (a trailing axis of
    length 1 is dropped), finite, and not constant. A folder or a ``.series`` manifest is
    a DICOM series, loaded by :func:`ichlib.dicom.load_dicom_series`.

    Raises:
        DataError: Naming the file and the problem: missing, empty, truncated, not NIfTI,
            not 3D, implausibly large (refused before allocation), NaN/Inf, or constant.
    """
    path = Path(path)
    if _is_dicom_series(path):
        from ichlib.dicom import load_dicom_series

        return load_dicom_series(path)
    img = _open_nifti(path)
    header = _header_of(img, path)
    data = _read_voxels(img, path)
    if not np.isfinite(data).all():
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise DataError(path, f"{bad} voxels are NaN or Inf; refusing to guess their HU")
    if data.size and float(data.min()) == float(data.max()):
        raise DataError(path, f"volume is constant ({float(data.min()):g} everywhere); "
                              "it holds no image")
    return Volume(hu=_to_slices_first(data), spacing=header.spacing, path=path)


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Load a hemorrhage mask as a boolean array ``[slices, H, W]`` (nonzero = blood).

    Raises:
        DataError: If the file is not a readable 3D NIfTI volume or holds NaN/Inf.
    """
    path = Path(path)
    img = _open_nifti(path)
    _header_of(img, path)
    data = _read_voxels(img, path)
    if not np.isfinite(data).all():
        raise DataError(path, "mask holds NaN or Inf values")
    return _to_slices_first(data > 0)


def save_volume(path: str | os.PathLike, hu: np.ndarray,
                spacing: tuple[float, float, float] = (5.0, 0.45, 0.45),
                dtype: type = np.int16) -> Path:
    """Write ``hu [slices, H, W]`` as NIfTI, the inverse of :func:`load_volume`.

    Values are rounded and stored as ``dtype`` with ``scl_slope = 1`` and ``scl_inter = 0``.
    The write is atomic.

    Args:
        path: Destination ending in ``.nii`` or ``.nii.gz``.
        hu: Array ``[slices, H, W]``.
        spacing: ``(slice, row, column)`` voxel size in mm.
        dtype: On-disk integer type (int16 for CT, uint8 for masks).
    """
    path = Path(path)
    if hu.ndim != 3:
        raise ValueError(f"expected [slices, H, W], got shape {hu.shape}")
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if not np.issubdtype(hu.dtype, np.integer):
            hu = np.clip(np.rint(hu), info.min, info.max)
        elif hu.size and (hu.min() < info.min or hu.max() > info.max):
            hu = np.clip(hu, info.min, info.max)
    # [S, H, W] C-order transposed is Fortran-ordered, which is how NIfTI stores voxels,
    # so nibabel writes it without another copy.
    data = np.transpose(np.asarray(hu).astype(dtype, copy=False), (2, 1, 0))
    s_slice, s_row, s_col = (float(s) for s in spacing)
    img = nib.Nifti1Image(data, np.diag([s_col, s_row, s_slice, 1.0]))
    img.header.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_xyzt_units("mm")
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, tmp)
    return path


def save_mask(path: str | os.PathLike, mask: np.ndarray,
              spacing: tuple[float, float, float] = (5.0, 0.45, 0.45)) -> Path:
    """Write a boolean mask ``[slices, H, W]`` as a 0/255 uint8 NIfTI, like CT-ICH's."""
    return save_volume(path, mask.astype(np.uint8) * 255, spacing, dtype=np.uint8)


# --- internals -------------------------------------------------------------------------

def _is_dicom_series(path: Path) -> bool:
    """A ``.series`` manifest, or a folder (not one misnamed as a NIfTI file)."""
    return path.suffix == ".series" or (path.is_dir() and not path.name.endswith(_NIFTI_SUFFIXES))


def _open_nifti(path: Path) -> nib.Nifti1Image:
    if not path.name.endswith(_NIFTI_SUFFIXES):
        raise DataError(path, "not a NIfTI file name (expected .nii or .nii.gz)")
    if path.is_dir():
        raise DataError(path, "is a directory, expected a NIfTI file")
    if not path.exists():
        raise DataError(path, "file not found")
    if not os.access(path, os.R_OK):
        raise DataError(path, "no permission to read the file")
    size = path.stat().st_size
    if size == 0:
        raise DataError(path, "file is empty (0 bytes)")
    if path.name.endswith(".gz"):
        _check_gzip(path)
    elif size < 348:
        raise DataError(path, f"file is truncated: {size} bytes is smaller than a NIfTI header")
    try:
        img = nib.load(path)
    except DataError:
        raise
    except Exception as exc:  # nibabel raises many types for junk input
        raise DataError(path, f"not a readable NIfTI volume ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(path, f"is a {type(img).__name__}, not a NIfTI volume")
    if type(img).__name__.startswith("Cifti"):
        raise DataError(path, "is a CIFTI file, not a CT volume")
    intent = img.header.get_intent()[0] if hasattr(img.header, "get_intent") else "none"
    if str(intent).startswith("dense") or "connectivity" in str(intent):
        raise DataError(path, f"is a CIFTI-style NIfTI (intent {intent!r}), not a CT volume")
    return img


def _check_gzip(path: Path) -> None:
    try:
        with gzip.open(path, "rb") as fh:
            fh.read(348)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(path, f"not a valid gzip file ({exc})") from exc


def _header_of(img: nib.Nifti1Image, path: Path) -> VolumeHeader:
    shape = tuple(int(s) for s in img.header.get_data_shape())
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        kind = {2: "a 2D image", 4: "a 4D series"}.get(len(shape), f"{len(shape)}D")
        raise DataError(path, f"expected a 3D volume, got {kind} of shape {shape}")
    if min(shape) < 1:
        raise DataError(path, f"header claims an empty shape {shape}")
    if max(shape) > MAX_EXTENT or np.prod(shape, dtype=np.float64) > MAX_VOXELS:
        raise DataError(path, f"header claims an implausible shape {shape}; refusing to "
                              f"allocate it (limit {MAX_EXTENT} per axis, {MAX_VOXELS} voxels)")
    dtype = img.header.get_data_dtype()
    if not path.name.endswith(".gz"):
        # nibabel resets the loaded header's vox_offset to 0; the proxy keeps the real one.
        offset = int(getattr(img.dataobj, "offset", img.header["vox_offset"]))
        expected = offset + int(np.prod(shape)) * dtype.itemsize
        actual = path.stat().st_size
        if actual < expected:
            raise DataError(path, f"file is truncated: {actual} bytes, the header needs {expected}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return VolumeHeader(shape=(shape[2], shape[1], shape[0]),
                        spacing=(zooms[2], zooms[1], zooms[0]), dtype=dtype)


def _read_voxels(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise DataError(path, f"could not read the voxels ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 4:
        data = data[..., 0]
    return data


def _to_slices_first(data: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
