"""NIfTI volumes and masks: reading headers and voxels, and writing them atomically.

Convention: a :class:`~ichlib.io.volume.Volume` holds ``hu[k]`` = the file's slice ``k``
along its **last** voxel axis, so CT-ICH's 1-based ``SliceNumber`` ``n`` is ``hu[n - 1]``.
Within a slice, rows follow the file's second voxel axis and columns its first
(``data[:, :, k].T``). No reorientation to RAS happens, because that could reverse the
slice axis and silently mislabel every slice.
"""


from __future__ import annotations

import contextlib
import gzip
import io
import os
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ichlib.errors import ConfigError, DataError, DataWarning
from ichlib.io.atomic import atomic_path
from ichlib.io.files import regular_file
from ichlib.io.volume import MAX_EXTENT, MAX_VOXELS, Volume, VolumeHeader, hu_problem

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def read_nifti_header(path: str | os.PathLike, mask: bool = False) -> VolumeHeader:
    """Read and validate a NIfTI header without reading any voxel.

    Args:
        path: The file.
        mask: It is a mask (0/nonzero, any type), not a CT scan (whose voxel type must be
            able to hold HU).

    Raises:
        DataError: If the path is not a readable 3D NIfTI volume of a sane size.
    """
    path = Path(path)
    img = _open_nifti(path)
    header = _header_of(img, path)
    if not mask:
        _check_scan_dtype(img, path)
    return header


def load_nifti(path: str | os.PathLike) -> Volume:
    """Load a NIfTI CT volume as float32 HU ``[slices, H, W]`` (see :func:`ichlib.io.load_volume`).

    Raises:
        DataError: Naming the file and the problem: missing, empty, truncated, not NIfTI,
            not 3D, implausibly large (refused before allocation), NaN/Inf, or constant.
    """
    path = Path(path)
    img = _open_nifti(path)
    header = _header_of(img, path)
    _check_scan_dtype(img, path)
    data = _read_voxels(img, path)
    problem = hu_problem(data)
    if problem:
        raise DataError(path, problem)
    return Volume(hu=_to_slices_first(data), spacing=header.spacing, path=path)


def load_nifti_mask(path: str | os.PathLike) -> np.ndarray:
    """Load a NIfTI hemorrhage mask as a boolean array ``[slices, H, W]`` (nonzero = blood).

    Raises:
        DataError: If the file is not a readable 3D NIfTI volume or holds NaN/Inf.
    """
    path = Path(path)
    img = _open_nifti(path)
    _header_of(img, path)
    if img.header.get_data_dtype().kind == "c":
        raise DataError(path, "mask holds complex values")
    data = _read_voxels(img, path)
    if not np.isfinite(data).all():
        raise DataError(path, "mask holds NaN or Inf values")
    return _to_slices_first(data > 0)


def is_nifti_name(path: str | os.PathLike) -> bool:
    """True for a ``.nii`` or ``.nii.gz`` file name."""
    return Path(path).name.endswith(_NIFTI_SUFFIXES)


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
    if not all(np.isfinite(float(s)) and float(s) > 0 for s in spacing):
        raise ConfigError(f"{path}: voxel spacing {tuple(spacing)} is not positive and finite")
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


def save_like(path: str | os.PathLike, volume: np.ndarray, like: str | os.PathLike,
              description: str = "") -> Path:
    """Write a float32 volume ``[slices, H, W]`` on the grid of the NIfTI scan ``like``.

    The array follows the :class:`~ichlib.io.volume.Volume` convention, so the file
    overlays ``like`` voxel for voxel. The scan's qform and sform are copied separately,
    each with its own code (a viewer that reads the qform, such as SimpleITK, and one that
    reads the sform, such as nibabel, both place it right), with the scan's units. Values
    are stored as float32 without scaling. The write is atomic.

    Raises:
        DataError: If ``like`` cannot be read.
        ConfigError: If ``volume`` does not have the scan's shape.
    """
    path, like = Path(path), Path(like)
    header = read_nifti_header(like)
    if tuple(volume.shape) != header.shape:
        raise ConfigError(f"volume {tuple(volume.shape)} does not match {like} {header.shape}")
    source = _open_nifti(like)
    problem = _geometry_problem(source, like)
    if problem:
        raise DataError(like, f"{problem}; the maps cannot be placed in its geometry")
    data = np.ascontiguousarray(np.transpose(np.asarray(volume, dtype=np.float32), (2, 1, 0)))
    img = nib.Nifti1Image(data, None)
    qform, qcode = source.header.get_qform(coded=True)
    sform, scode = source.header.get_sform(coded=True)
    img.header.set_qform(qform if qform is not None else source.affine, code=int(qcode or 0))
    img.header.set_sform(sform if sform is not None else source.affine, code=int(scode or 0))
    if not qcode and not scode:  # neither set: keep the voxel sizes as the fallback geometry
        img.header.set_zooms(source.header.get_zooms()[:3])
    img.header.set_xyzt_units(*source.header.get_xyzt_units())
    img.header.set_data_dtype(np.float32)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["descrip"] = description.encode()[:79]
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, tmp)
    return path


def _open_nifti(path: Path) -> nib.Nifti1Image:
    if not path.name.endswith(_NIFTI_SUFFIXES):
        raise DataError(path, "not a NIfTI file name (expected .nii or .nii.gz)")
    if path.is_dir():
        raise DataError(path, "is a directory, expected a NIfTI file")
    if not path.exists():
        raise DataError(path, "file not found")
    if not os.access(path, os.R_OK):
        raise DataError(path, "no permission to read the file")
    size = regular_file(path, "NIfTI file")
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
    # nibabel resets the loaded header's vox_offset to 0; the proxy keeps the real one.
    offset = int(getattr(img.dataobj, "offset", img.header["vox_offset"]))
    first = int(img.header["sizeof_hdr"]) + 4  # a single-file NIfTI's voxels follow its header
    if offset < first:
        raise DataError(path, f"header says the voxels start at byte {offset} (vox_offset), inside "
                              f"the {first - 4}-byte header; they would be read shifted")
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    actual = path.stat().st_size
    if not path.name.endswith(".gz") and actual < expected:
        raise DataError(path, f"file is truncated: {actual} bytes, the header needs {expected}")
    if path.name.endswith(".gz") and expected > _MAX_GZIP_RATIO * actual + (1 << 16):
        raise DataError(path, f"header claims {expected / 1e6:.0f} MB of voxels, more than a "
                              f"{actual}-byte gzip file can hold (deflate expands at most about "
                              f"{_MAX_GZIP_RATIO}:1); refusing to allocate it")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    problem = _geometry_problem(img, path)
    if problem:
        warnings.warn(f"{path}: {problem}; the scan's geometry is unknown (prediction does not "
                      "need it; maps in its geometry cannot be written)", DataWarning, stacklevel=4)
    return VolumeHeader(shape=(shape[2], shape[1], shape[0]),
                        spacing=(zooms[2], zooms[1], zooms[0]), dtype=dtype,
                        affine=np.asarray(img.affine, dtype=np.float64))


#: Largest expansion of deflate (about 1032:1); a gzip file cannot hold more than this.
_MAX_GZIP_RATIO = 1100


def _geometry_problem(img: nib.Nifti1Image, path: Path) -> str | None:
    """Why a NIfTI's voxel sizes or affine are unusable (NaN, zero, singular), or None."""
    zooms = [float(z) for z in _raw_header(img, path).get_zooms()[:3]]
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        return f"voxel size {tuple(zooms)} (pixdim) is not positive and finite"
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        return "its affine (sform/qform) holds NaN or Inf"
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        return "its affine (sform/qform) is singular"
    return None


def _raw_header(img: nib.Nifti1Image, path: Path) -> nib.Nifti1Header:
    """The header as the file has it: nibabel's loader quietly sets zero voxel sizes to 1."""
    with contextlib.suppress(Exception):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            block = fh.read(int(img.header["sizeof_hdr"]))
        return type(img.header).from_fileobj(io.BytesIO(block), check=False)
    return img.header


def _check_scan_dtype(img: nib.Nifti1Image, path: Path) -> None:
    """Refuse voxel types that cannot hold a CT in HU: complex, boolean, structured (RGB), and
    8-bit integers without ``scl_slope``/``scl_inter`` (a mask, or a rescaled image)."""
    dtype = img.header.get_data_dtype()
    if dtype.kind in "cbV":
        kind = {"c": "complex", "b": "boolean", "V": "structured (RGB?)"}[dtype.kind]
        raise DataError(path, f"voxels are {kind} ({dtype}); a CT volume holds real HU values")
    # nibabel moves scl_slope / scl_inter from the loaded header to the data proxy
    slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
    scaled = float(slope) != 1.0 or float(inter) != 0.0
    if dtype.kind in "iu" and dtype.itemsize == 1 and not scaled:
        raise DataError(path, f"voxels are {dtype} without scl_slope/scl_inter, which cannot hold HU "
                              "(air is about -1000, bone above 1000): a mask or a rescaled image?")


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
