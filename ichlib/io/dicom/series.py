"""Reading a CT DICOM series into a :class:`~ichlib.io.volume.Volume`: one slice per file, or
the frames of an Enhanced CT (multi-frame) file, placed by their functional groups
(:mod:`ichlib.io.dicom.enhanced`).

The result follows the NIfTI loader's conventions: ``hu`` is float32 HU ``[slices, H, W]``
and ``spacing`` is ``(slice, row, column)`` in mm.

* **Rows and columns** are the DICOM ``Rows`` and ``Columns`` as stored (row 0 first); no
  in-plane flip or resampling happens.
* **Slice order** is by position along the slice normal ``n = row_cos x col_cos`` (from
  ``ImageOrientationPatient``), that is ``ImagePositionPatient . n``, ascending. For an axial
  head CT (patient coordinates, LPS) that is feet to head. This is correct under gantry tilt,
  where ``z`` alone can mis-order slices. ``InstanceNumber`` and file names are never used.
* **Slice spacing** is the median gap between consecutive positions along ``n``; row and
  column spacing are ``PixelSpacing[0]`` and ``PixelSpacing[1]``.
* **HU** come from the modality LUT (``RescaleSlope``/``RescaleIntercept``) applied to the
  stored values, read as ``BitsStored``-bit integers (signed if ``PixelRepresentation`` is
  1). See :func:`has_12bit_bug` for the RSNA 2019 images whose stored values are signed
  although the header says unsigned.
* **Air**: pixels equal to ``PixelPaddingValue`` (or inside the padding range), and values
  below :data:`OUTSIDE_FOV_HU` (the -2000 / -3024 HU circle outside the reconstruction
  field of view), become :data:`AIR_HU`.

A series *source* is a folder (its files, not recursive), a manifest file ending in
``.series`` (see :func:`write_series_manifest`), or a sequence of file paths.

Non-DICOM files in a folder (no ``DICM`` marker, empty, or DICOM without an image such as a
``DICOMDIR``) are skipped with an :class:`IgnoredFilesWarning` naming each file and the
reason (``non_dicom="warn"``, the default), skipped silently (``"skip"``) or refused
(``"raise"``). Hidden files (name starting with ``.``) and sub-folders are always skipped
silently. A file that *is* DICOM but cannot be read is never skipped: it is a
:class:`~ichlib.errors.DataError`.

Every problem that makes a series unusable raises :class:`~ichlib.errors.DataError` naming
the folder (or file) and the problem: several series in one folder, duplicate positions, a
gap wider than ``max_gap_ratio`` times the median spacing, slices of different sizes or
orientations, missing geometry, compressed pixel data without an installed decoder,
truncated pixel data. :func:`load_dicom_series` never mutates a dataset it reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from ichlib.errors import DataError
from ichlib.io.atomic import atomic_write_text
from ichlib.io.dicom.enhanced import frame_headers
from ichlib.io.dicom.headers import (
    NotDicomError,
    _header_from_dataset,
    _loaded_pixel_problem,
    _read_dataset,
    check_slice_header,
    read_header_dataset,
)
from ichlib.io.dicom.ordering import MAX_GAP_RATIO, SeriesLayout, order_slices, select_series
from ichlib.io.dicom.pixels import dataset_to_hu, frames_to_hu
from ichlib.io.files import MAX_DICOM_BYTES, MAX_MANIFEST_BYTES, regular_file
from ichlib.io.volume import MAX_EXTENT, MAX_VOXELS, Volume, VolumeHeader, hu_problem

#: File name suffix of a series manifest.
MANIFEST_SUFFIX = ".series"
_MANIFEST_MAGIC = "# ichlib DICOM series manifest v1"
_NON_DICOM_CHOICES = ("warn", "skip", "raise")


class IgnoredFilesWarning(UserWarning):
    """Files in a series folder were skipped because they are not DICOM images."""


# --- public API -------------------------------------------------------------------------


def read_series_headers(source: str | os.PathLike | Sequence[str | os.PathLike],
                        series_uid: str | None = None, non_dicom: str = "warn",
                        max_gap_ratio: float | None = MAX_GAP_RATIO) -> SeriesLayout:
    """Read the headers of a series and put its slices in volume order (no pixels decoded).

    Args:
        source: A folder, a ``.series`` manifest, or a sequence of files.
        series_uid: Which series to take from a folder holding several; None requires
            exactly one.
        non_dicom: What to do with files that are not DICOM images: ``"warn"``, ``"skip"``
            or ``"raise"``.
        max_gap_ratio: Refuse gaps wider than this many median spacings; None allows any.

    Raises:
        DataError: For any problem listed in the module docstring, except undecodable or
            truncated pixel data (see :func:`read_dicom_series_header`).
    """
    where, files = _resolve_source(source)
    headers, ignored = [], []
    for path in files:
        try:
            ds, header = read_header_dataset(path)
        except NotDicomError as exc:
            ignored.append((path, exc.problem))
            continue
        headers += frame_headers(ds, header)
    _handle_ignored(where, ignored, non_dicom)
    chosen = select_series(headers, where, series_uid)
    return order_slices(chosen, where, max_gap_ratio)


def read_dicom_series_header(source: str | os.PathLike | Sequence[str | os.PathLike],
                             series_uid: str | None = None, non_dicom: str = "warn",
                             max_gap_ratio: float | None = MAX_GAP_RATIO) -> VolumeHeader:
    """Shape, spacing and stored type of a series, from headers only (fast; for checks).

    Everything :func:`load_dicom_series` would refuse before decoding is refused here too:
    the checks of :func:`read_series_headers`, plus truncated pixel data, compressed pixel
    data without an installed decoder, multi-frame or colour images, and sizes beyond
    :data:`~ichlib.io.volume.MAX_VOXELS`.

    Returns:
        A :class:`~ichlib.io.volume.VolumeHeader` with ``shape (slices, H, W)``.
    """
    layout = read_series_headers(source, series_uid, non_dicom, max_gap_ratio)
    for header in layout.headers:
        check_slice_header(header)
    _check_size(layout)
    return VolumeHeader(shape=layout.shape, spacing=layout.spacing, dtype=layout.headers[0].dtype)


def load_dicom_series(source: str | os.PathLike | Sequence[str | os.PathLike],
                      series_uid: str | None = None, non_dicom: str = "warn",
                      max_gap_ratio: float | None = MAX_GAP_RATIO) -> Volume:
    """Load a CT series as float32 HU ``[slices, H, W]``, slices sorted along the normal.

    Args:
        source: A folder, a ``.series`` manifest, or a sequence of files.
        series_uid: Which series to take from a folder holding several; None requires
            exactly one.
        non_dicom: ``"warn"`` (default), ``"skip"`` or ``"raise"`` for non-DICOM files.
        max_gap_ratio: Refuse gaps wider than this many median spacings; None allows any.

    Returns:
        A :class:`~ichlib.io.volume.Volume` whose ``path`` is the folder or manifest (the
        first file's folder for a list of files).

    Raises:
        DataError: Naming the folder or file and the problem (see the module docstring);
            also for a volume that is constant.
    """
    where, files = _resolve_source(source)
    datasets: dict[Path, pydicom.Dataset] = {}
    headers, ignored = [], []
    for path in files:
        try:
            ds = _read_dataset(path)
            header = _header_from_dataset(ds, path, _loaded_pixel_problem(ds))
        except NotDicomError as exc:
            ignored.append((path, exc.problem))
            continue
        datasets[path] = ds
        headers += frame_headers(ds, header)
    _handle_ignored(where, ignored, non_dicom)
    layout = order_slices(select_series(headers, where, series_uid), where, max_gap_ratio)
    for header in layout.headers:
        check_slice_header(header)
    _check_size(layout)
    hu = _stack_hu(layout, datasets)
    problem = hu_problem(hu)
    if problem:
        raise DataError(where, problem)
    return Volume(hu=hu, spacing=layout.spacing, path=where)


def write_series_manifest(path: str | os.PathLike, files: Sequence[str | os.PathLike],
                          series_uid: str = "") -> Path:
    """Write a ``.series`` manifest listing a series' files, if its content changed.

    Format: UTF-8 text, a magic first line, ``#`` comment lines (series UID and a
    fingerprint of every file's size and modification time), then one absolute path per
    line. The file is rewritten (atomically) only when its content changes, so caches keyed
    on the manifest's size and modification time (:class:`ichlib.preprocess.cache.VolumeCache`) stay
    valid until a listed DICOM file changes.

    Returns:
        The manifest path.
    """
    path = Path(path)
    if path.suffix != MANIFEST_SUFFIX:
        raise ValueError(f"a series manifest must end in {MANIFEST_SUFFIX}: {path}")
    resolved = [Path(f).absolute() for f in files]
    digest = hashlib.sha1()
    for f in resolved:
        stat = f.stat()
        digest.update(f"{f}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    text = "\n".join([_MANIFEST_MAGIC, f"# series: {series_uid}",
                      f"# fingerprint: {digest.hexdigest()}", *map(str, resolved)]) + "\n"
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8") == text:
            return path
    atomic_write_text(path, text)
    return path


def read_series_manifest(path: str | os.PathLike) -> list[Path]:
    """The files a ``.series`` manifest lists (relative paths are relative to its folder).

    Raises:
        DataError: If the manifest is missing, empty, or lists a file that does not exist.
    """
    path = Path(path)
    regular_file(path, "series manifest", MAX_MANIFEST_BYTES)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read the series manifest ({exc})") from exc
    files = [Path(s) for s in (line.strip() for line in lines) if s and not s.startswith("#")]
    files = [f if f.is_absolute() else path.parent / f for f in files]
    if not files:
        raise DataError(path, "series manifest lists no file")
    missing = [f for f in files if not f.exists()]
    if missing:
        raise DataError(path, f"{len(missing)} listed file(s) not found, e.g. {missing[0]}")
    for f in files:
        regular_file(f, "DICOM file", MAX_DICOM_BYTES)
    return files


# --- internals -------------------------------------------------------------------------


def _resolve_source(source: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[Path, list[Path]]:
    """``(where, files)`` for a folder, a manifest, or a list of files."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
            if not files:
                raise DataError(path, "folder holds no file")
            return path, files
        if path.suffix == MANIFEST_SUFFIX:
            return path, read_series_manifest(path)
        if not path.exists():
            raise DataError(path, "series folder not found")
        regular_file(path, "DICOM file", MAX_DICOM_BYTES)
        return path, [path]
    files = [Path(f) for f in source]
    if not files:
        raise DataError(None, "no DICOM file given")
    return files[0].parent, files


def _handle_ignored(where: Path, ignored: list[tuple[Path, str]], non_dicom: str) -> None:
    if non_dicom not in _NON_DICOM_CHOICES:
        raise ValueError(f"non_dicom must be one of {_NON_DICOM_CHOICES}, got {non_dicom!r}")
    if not ignored or non_dicom == "skip":
        return
    listing = "; ".join(f"{p.name}: {why}" for p, why in ignored[:10])
    more = f"; and {len(ignored) - 10} more" if len(ignored) > 10 else ""
    if non_dicom == "raise":
        raise DataError(where, f"{len(ignored)} file(s) are not DICOM images - {listing}{more}")
    warnings.warn(f"{where}: skipped {len(ignored)} file(s) that are not DICOM images - "
                  f"{listing}{more}", IgnoredFilesWarning, stacklevel=3)


def _stack_hu(layout: SeriesLayout, datasets: dict[Path, pydicom.Dataset]) -> np.ndarray:
    """HU ``[slices, H, W]`` in the layout's order; an enhanced file's frames are decoded once."""
    hu = np.empty(layout.shape, dtype=np.float32)
    frames: dict[Path, dict[int, np.ndarray]] = {}
    for k, header in enumerate(layout.headers):
        if header.frame is None:
            hu[k] = dataset_to_hu(datasets[header.path], header.path)
            continue
        if header.path not in frames:
            mine = [h for h in layout.headers if h.path == header.path]
            frames[header.path] = frames_to_hu(datasets[header.path], mine)
        hu[k] = frames[header.path][header.frame]
    return hu


def _check_size(layout: SeriesLayout) -> None:
    shape = layout.shape
    if max(shape) > MAX_EXTENT or math.prod(shape) > MAX_VOXELS:
        raise DataError(layout.headers[0].path.parent, f"series has an implausible shape {shape}; "
                        f"refusing to allocate it (limit {MAX_EXTENT} per axis, {MAX_VOXELS} voxels)")


