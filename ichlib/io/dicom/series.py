"""Reading a CT DICOM series (one slice per file) into a :class:`~ichlib.volumes.Volume`.

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
import functools
import hashlib
import logging
import math
import os
import struct
import threading
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ichlib.atomic import atomic_write_text
from ichlib.errors import DataError
from ichlib.volumes import MAX_EXTENT, MAX_VOXELS, Volume, VolumeHeader

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut as _apply_modality_lut
except ImportError:  # pydicom 2.4
    from pydicom.pixel_data_handlers.util import apply_modality_lut as _apply_modality_lut

#: HU written where the scanner stored no image.
AIR_HU = -1000.0
#: Rescaled values below this are outside the reconstruction field of view (scanners write
#: -2000 or -3024 there); no tissue, air included, is below about -1024 HU.
OUTSIDE_FOV_HU = -1500.0
#: A gap wider than this many median spacings means missing slices.
MAX_GAP_RATIO = 1.5
#: Two slices closer than this along the normal (mm) sit at the same position.
DUPLICATE_TOLERANCE_MM = 0.01
#: Largest difference between two slices' direction cosines treated as the same orientation.
ORIENTATION_TOLERANCE = 1e-3
#: File name suffix of a series manifest.
MANIFEST_SUFFIX = ".series"
_MANIFEST_MAGIC = "# ichlib DICOM series manifest v1"
_NON_DICOM_CHOICES = ("warn", "skip", "raise")
# Explicit-VR value representations whose length field is 4 bytes (after 2 reserved bytes).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}
_PIXEL_DATA_TAG = (0x7FE0, 0x0010)


class NotDicomError(DataError):
    """A file is not a DICOM image (not DICOM at all, empty, or DICOM without pixels)."""


class IgnoredFilesWarning(UserWarning):
    """Files in a series folder were skipped because they are not DICOM images."""


@dataclass(frozen=True)
class SliceHeader:
    """What one DICOM file's header says, read without decoding pixels.

    Attributes:
        path: The file.
        sop_uid: ``SOPInstanceUID`` (RSNA: the image id, e.g. ``ID_63eb1e259``).
        series_uid: ``SeriesInstanceUID``.
        study_uid: ``StudyInstanceUID``.
        patient_id: ``PatientID``.
        position: ``ImagePositionPatient`` (mm), or None if absent or malformed.
        orientation: ``ImageOrientationPatient`` (6 direction cosines), or None.
        rows: ``Rows``.
        columns: ``Columns``.
        pixel_spacing: ``PixelSpacing`` (between rows, between columns), or None.
        slice_thickness: ``SliceThickness``, or None.
        instance_number: ``InstanceNumber``, or None (informational only).
        transfer_syntax: The transfer syntax UID.
        bits_allocated: ``BitsAllocated``.
        bits_stored: ``BitsStored``.
        high_bit: ``HighBit``.
        pixel_representation: ``PixelRepresentation`` (0 unsigned, 1 signed).
        samples: ``SamplesPerPixel``.
        frames: ``NumberOfFrames`` (1 when absent).
        rescale_intercept: ``RescaleIntercept`` (0 when absent).
        rescale_slope: ``RescaleSlope`` (1 when absent).
        pixel_problem: Why the pixel data cannot be read (missing, truncated), or None.
    """

    path: Path
    sop_uid: str
    series_uid: str
    study_uid: str
    patient_id: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    instance_number: int | None
    transfer_syntax: str
    bits_allocated: int
    bits_stored: int
    high_bit: int
    pixel_representation: int
    samples: int
    frames: int
    rescale_intercept: float
    rescale_slope: float
    pixel_problem: str | None = None

    @property
    def dtype(self) -> np.dtype:
        """The stored integer type (``int16`` or ``uint16`` for CT)."""
        kind = "i" if self.pixel_representation == 1 else "u"
        return np.dtype(f"{kind}{max(1, self.bits_allocated // 8)}")

    @property
    def has_12bit_bug(self) -> bool:
        """True for the RSNA 2019 images whose stored values must be read as signed."""
        return _is_12bit_bug(self.bits_stored, self.pixel_representation, self.rescale_intercept)

    def to_record(self, root: Path | None = None) -> dict[str, str]:
        """Plain strings for a cache table; floats are written so they read back exactly.

        Args:
            root: If given, ``path`` is stored relative to it.
        """
        path = self.path.relative_to(root) if root is not None else self.path
        return {
            "file": path.as_posix(), "sop_uid": self.sop_uid, "series_uid": self.series_uid,
            "study_uid": self.study_uid, "patient_id": self.patient_id,
            "position": _join(self.position), "orientation": _join(self.orientation),
            "rows": str(self.rows), "columns": str(self.columns),
            "pixel_spacing": _join(self.pixel_spacing),
            "slice_thickness": _join(None if self.slice_thickness is None else (self.slice_thickness,)),
            "instance_number": "" if self.instance_number is None else str(self.instance_number),
            "transfer_syntax": self.transfer_syntax, "bits_allocated": str(self.bits_allocated),
            "bits_stored": str(self.bits_stored), "high_bit": str(self.high_bit),
            "pixel_representation": str(self.pixel_representation), "samples": str(self.samples),
            "frames": str(self.frames), "rescale_intercept": repr(self.rescale_intercept),
            "rescale_slope": repr(self.rescale_slope), "pixel_problem": self.pixel_problem or "",
        }

    @classmethod
    def from_record(cls, record: dict[str, str], root: Path | None = None) -> SliceHeader:
        """Inverse of :meth:`to_record`."""
        path = Path(record["file"])
        thickness = _split(record["slice_thickness"])
        return cls(
            path=root / path if root is not None else path,
            sop_uid=record["sop_uid"], series_uid=record["series_uid"],
            study_uid=record["study_uid"], patient_id=record["patient_id"],
            position=_split(record["position"]), orientation=_split(record["orientation"]),
            rows=int(record["rows"]), columns=int(record["columns"]),
            pixel_spacing=_split(record["pixel_spacing"]),
            slice_thickness=thickness[0] if thickness else None,
            instance_number=int(record["instance_number"]) if record["instance_number"] else None,
            transfer_syntax=record["transfer_syntax"],
            bits_allocated=int(record["bits_allocated"]), bits_stored=int(record["bits_stored"]),
            high_bit=int(record["high_bit"]),
            pixel_representation=int(record["pixel_representation"]),
            samples=int(record["samples"]), frames=int(record["frames"]),
            rescale_intercept=float(record["rescale_intercept"]),
            rescale_slope=float(record["rescale_slope"]),
            pixel_problem=record["pixel_problem"] or None,
        )


#: Columns of :meth:`SliceHeader.to_record`, in order.
RECORD_FIELDS: tuple[str, ...] = (
    "file", "sop_uid", "series_uid", "study_uid", "patient_id", "position", "orientation",
    "rows", "columns", "pixel_spacing", "slice_thickness", "instance_number", "transfer_syntax",
    "bits_allocated", "bits_stored", "high_bit", "pixel_representation", "samples", "frames",
    "rescale_intercept", "rescale_slope", "pixel_problem",
)


@dataclass(frozen=True)
class SeriesLayout:
    """The slices of one series in volume order, from headers only.

    Attributes:
        headers: One per slice, sorted along the normal (the volume's slice order).
        positions: Position of each slice along the normal, mm, ascending.
        normal: Unit slice normal ``row_cos x col_cos``.
        spacing: ``(slice, row, column)`` in mm.
    """

    headers: tuple[SliceHeader, ...]
    positions: np.ndarray
    normal: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, H, W)``."""
        return (len(self.headers), self.headers[0].rows, self.headers[0].columns)

    @property
    def series_uid(self) -> str:
        """The series' ``SeriesInstanceUID``."""
        return self.headers[0].series_uid


# --- public API -------------------------------------------------------------------------

def read_slice_header(path: str | os.PathLike) -> SliceHeader:
    """Read one file's DICOM header (``stop_before_pixels``), and check its pixel element.

    The pixel data is not read, but its element header is: a declared length beyond the
    end of the file, or shorter than ``Rows x Columns x BitsAllocated``, is recorded in
    :attr:`SliceHeader.pixel_problem`.

    Raises:
        NotDicomError: The file is empty, not DICOM, or DICOM without an image.
        DataError: The file is DICOM but its header cannot be read, or it cannot be opened.
    """
    path = Path(path)
    size = _file_size(path)
    try:
        with _quiet_pydicom(), open(path, "rb") as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
            pixel_tell = fh.tell()
            element = fh.read(12)
    except InvalidDicomError as exc:
        raise NotDicomError(path, "not a DICOM file (no 'DICM' marker after the 128-byte "
                                  "preamble)") from exc
    except OSError as exc:
        raise DataError(path, f"cannot read the file ({exc.strerror or exc})") from exc
    except Exception as exc:  # pydicom raises many types for a broken header
        raise DataError(path, f"DICOM header is unreadable ({type(exc).__name__}: {exc})") from exc
    header = _header_from_dataset(ds, path, None)
    return replace(header, pixel_problem=_pixel_element_problem(ds, element, pixel_tell, size))


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
            headers.append(read_slice_header(path))
        except NotDicomError as exc:
            ignored.append((path, exc.problem))
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
    :data:`~ichlib.volumes.MAX_VOXELS`.

    Returns:
        A :class:`~ichlib.volumes.VolumeHeader` with ``shape (slices, H, W)``.
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
        A :class:`~ichlib.volumes.Volume` whose ``path`` is the folder or manifest (the
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
        headers.append(header)
    _handle_ignored(where, ignored, non_dicom)
    layout = order_slices(select_series(headers, where, series_uid), where, max_gap_ratio)
    for header in layout.headers:
        check_slice_header(header)
    _check_size(layout)
    hu = np.empty(layout.shape, dtype=np.float32)
    for k, header in enumerate(layout.headers):
        hu[k] = dataset_to_hu(datasets[header.path], header.path)
    if hu.size and float(hu.min()) == float(hu.max()):
        raise DataError(where, f"volume is constant ({float(hu.min()):g} HU everywhere); it "
                               "holds no image")
    return Volume(hu=hu, spacing=layout.spacing, path=where)


def dataset_to_hu(ds: pydicom.Dataset, path: str | os.PathLike | None = None) -> np.ndarray:
    """One single-frame CT image as float32 HU ``[Rows, Columns]``; ``ds`` is not modified.

    Stored values are taken as ``BitsStored``-bit integers (the bits above are ignored, as
    the standard says), signed when ``PixelRepresentation`` is 1 or when
    :func:`has_12bit_bug`. Then the modality LUT (pydicom's ``apply_modality_lut``) gives
    HU. Padding and outside-the-field-of-view pixels become :data:`AIR_HU`.

    Args:
        ds: A dataset read with its pixel data.
        path: The file, for messages.

    Raises:
        DataError: If the image is not single-frame greyscale, its pixel data is missing,
            truncated, compressed without a decoder, or cannot be decoded.
    """
    where = path if path is not None else getattr(ds, "filename", None)
    header = _header_from_dataset(ds, Path(where) if where else Path("<dataset>"),
                                  _loaded_pixel_problem(ds))
    check_slice_header(header)
    try:
        raw = _decode_pixels(ds)
    except Exception as exc:
        name = _transfer_syntax_name(header.transfer_syntax)
        raise DataError(where, f"could not decode the pixel data ({name}): "
                               f"{type(exc).__name__}: {exc}") from exc
    raw = np.asarray(raw)
    if raw.shape != (header.rows, header.columns):
        raise DataError(where, f"decoded pixel array has shape {raw.shape}, the header says "
                               f"{header.rows}x{header.columns}")
    signed = header.pixel_representation == 1 or header.has_12bit_bug
    stored = stored_values(raw, header.bits_stored, signed)
    hu = _modality_lut(stored, ds).astype(np.float32)
    hu[_padding_mask(ds, stored, header.bits_stored, signed)] = AIR_HU
    hu[hu < OUTSIDE_FOV_HU] = AIR_HU
    return hu


def has_12bit_bug(ds: pydicom.Dataset) -> bool:
    """True for an image whose 12-bit stored values are signed though the header says not.

    Some RSNA 2019 brain CT images have ``BitsStored = 12``, ``PixelRepresentation = 0``
    (unsigned) and a ``RescaleIntercept`` near 0 (the test is ``> -100``). Read as
    unsigned, 12 bits with that intercept give 0..4095 HU: no air, which a head CT always
    has, so the header cannot be right. The values are 12-bit two's complement: air
    (-1000 HU) is stored as 3096 and the -2000 HU outside the field of view as 2096. The
    fix (:func:`stored_values` with ``signed=True``) maps stored ``v >= 2048`` to
    ``v - 4096`` *before* the rescale.

    The fix widely shared during the competition instead added 1000 and wrapped at 4096,
    which only moves values above 3096; stored 2048..3095 (here the outside-the-FOV ring at
    -2000 HU) would become bright 2048..3095 HU "bone". Reading the 12 bits as signed needs
    no magic offset and gives both right.
    """
    return _is_12bit_bug(int(ds.get("BitsStored", 16)), int(ds.get("PixelRepresentation", 0)),
                         float(ds.get("RescaleIntercept", 0) or 0))


def stored_values(raw: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Stored pixel values as int32: the low ``bits_stored`` bits, two's complement if signed.

    Works the same whether the decoder left the unused high bits as they were in the file
    (pydicom 2) or cleared / sign-extended them (pydicom 3). Returns a new array.
    """
    values = np.asarray(raw).astype(np.int64) & ((1 << bits_stored) - 1)
    if signed:
        values[values >= (1 << (bits_stored - 1))] -= 1 << bits_stored
    return values.astype(np.int32)


@functools.lru_cache(maxsize=64)
def decoder_available(transfer_syntax: str) -> bool:
    """True if an installed pydicom plugin can decode pixel data in this transfer syntax.

    The answer is cached per transfer syntax for the life of the process.
    """
    uid = pydicom.uid.UID(str(transfer_syntax))
    if not uid.is_transfer_syntax:
        return False
    if not uid.is_compressed:
        return True
    try:  # pydicom >= 3
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom 2.4
        return any(h.is_available() and h.supports_transfer_syntax(uid)
                   for h in pydicom.config.pixel_data_handlers)
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def check_slice_header(header: SliceHeader) -> None:
    """Refuse a slice whose pixels cannot be turned into HU, from its header alone.

    Raises:
        DataError: Multi-frame or colour image, unusual bit layout, missing or truncated
            pixel data, or compressed pixel data with no installed decoder.
    """
    path = header.path
    if header.pixel_problem:
        raise DataError(path, header.pixel_problem)
    if header.frames != 1:
        raise DataError(path, f"multi-frame image ({header.frames} frames); only one slice per "
                              "file is supported (export the series as single-frame images)")
    if header.samples != 1:
        raise DataError(path, f"{header.samples} samples per pixel; a CT slice is greyscale")
    if header.bits_allocated not in (8, 16, 32) or not 1 <= header.bits_stored <= header.bits_allocated:
        raise DataError(path, f"unsupported bit layout: BitsAllocated {header.bits_allocated}, "
                              f"BitsStored {header.bits_stored}")
    if header.high_bit != header.bits_stored - 1:
        raise DataError(path, f"unsupported bit layout: HighBit {header.high_bit} with "
                              f"BitsStored {header.bits_stored} (expected HighBit "
                              f"{header.bits_stored - 1})")
    if not decoder_available(header.transfer_syntax):
        name = _transfer_syntax_name(header.transfer_syntax)
        raise DataError(path, f"pixel data is compressed ({name}) and no installed decoder "
                              "can read it; install one that pydicom supports (e.g. "
                              "'pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg', or "
                              "'python-gdcm', or Pillow for JPEG 2000 / baseline JPEG)")


def select_series(headers: Sequence[SliceHeader], where: str | os.PathLike,
                  series_uid: str | None = None) -> list[SliceHeader]:
    """The headers of one series.

    Raises:
        DataError: No DICOM image at all; ``series_uid`` absent; or several series and no
            ``series_uid`` (the message lists each with its file count and a file).
    """
    if not headers:
        raise DataError(where, "no DICOM image found")
    groups: dict[str, list[SliceHeader]] = defaultdict(list)
    for header in headers:
        groups[header.series_uid].append(header)
    if series_uid is not None:
        if series_uid not in groups:
            raise DataError(where, f"no image of series {series_uid}; found {_list_series(groups)}")
        return groups[series_uid]
    if len(groups) > 1:
        raise DataError(where, f"{len(groups)} series found: {_list_series(groups)}; pass "
                               "series_uid= to choose one")
    return list(headers)


def order_slices(headers: Sequence[SliceHeader], where: str | os.PathLike,
                 max_gap_ratio: float | None = MAX_GAP_RATIO) -> SeriesLayout:
    """Sort one series' slices along the slice normal and check its geometry.

    This is the one place slice order is decided: :func:`load_dicom_series` and the RSNA
    label reader both call it, so labels and slices line up.

    Raises:
        DataError: Slices of different sizes, orientations or pixel spacings; missing
            position, orientation or pixel spacing; duplicate positions; a gap wider than
            ``max_gap_ratio`` median spacings.
    """
    if not headers:
        raise DataError(where, "no DICOM image found")
    sizes = Counter((h.rows, h.columns) for h in headers)
    if len(sizes) > 1:
        listing = "; ".join(f"{r}x{c}: {n} file(s), e.g. {_example(headers, lambda h, r=r, c=c: (h.rows, h.columns) == (r, c))}"
                            for (r, c), n in sizes.most_common())
        raise DataError(where, f"slices have different sizes (Rows x Columns) - {listing}; "
                               "refusing to stack them")
    missing = [h for h in headers if h.position is None or h.orientation is None]
    if missing:
        raise DataError(where, f"{len(missing)} slice(s) lack ImagePositionPatient or "
                               f"ImageOrientationPatient (e.g. {missing[0].path.name}); slice "
                               "order cannot be determined")
    no_spacing = [h for h in headers if h.pixel_spacing is None]
    if no_spacing:
        raise DataError(where, f"{len(no_spacing)} slice(s) lack PixelSpacing (e.g. "
                               f"{no_spacing[0].path.name})")
    first = np.asarray(headers[0].orientation, dtype=np.float64)
    for h in headers[1:]:
        if np.abs(np.asarray(h.orientation) - first).max() > ORIENTATION_TOLERANCE:
            raise DataError(where, f"slices have different orientations: {headers[0].path.name} "
                                   f"has {_fmt(first)}, {h.path.name} has {_fmt(h.orientation)} "
                                   "(a localizer in the series?)")
    spacing0 = np.asarray(headers[0].pixel_spacing)
    for h in headers[1:]:
        if np.abs(np.asarray(h.pixel_spacing) - spacing0).max() > 1e-3 * max(1.0, spacing0.max()):
            raise DataError(where, f"slices have different PixelSpacing: {headers[0].path.name} "
                                   f"has {_fmt(spacing0)}, {h.path.name} has {_fmt(h.pixel_spacing)}")
    normal = _slice_normal(first, where)
    along = np.array([np.dot(np.asarray(h.position, dtype=np.float64), normal) for h in headers])
    order = np.argsort(along, kind="stable")
    ordered = tuple(headers[i] for i in order)
    positions = along[order]
    diffs = np.diff(positions)
    dup = np.flatnonzero(diffs < DUPLICATE_TOLERANCE_MM)
    if len(dup):
        pairs = ", ".join(f"{ordered[i].path.name} and {ordered[i + 1].path.name} at "
                          f"{positions[i]:.2f} mm" for i in dup[:5])
        raise DataError(where, f"{len(dup)} duplicate slice position(s) along the normal: {pairs}")
    if len(diffs):
        slice_mm = float(np.median(diffs))
    else:
        slice_mm = float(headers[0].slice_thickness or 1.0)
    if max_gap_ratio is not None and len(diffs) >= 2:
        gaps = np.flatnonzero(diffs > max_gap_ratio * slice_mm)
        if len(gaps):
            listing = ", ".join(f"{diffs[i]:.2f} mm between {ordered[i].path.name} "
                                f"({positions[i]:.2f}) and {ordered[i + 1].path.name} "
                                f"({positions[i + 1]:.2f})" for i in gaps[:5])
            raise DataError(where, f"{len(gaps)} gap(s) wider than {max_gap_ratio:g} x the median "
                                   f"spacing {slice_mm:.2f} mm (missing slices?): {listing}")
    row_mm, col_mm = (float(s) for s in spacing0)
    return SeriesLayout(headers=ordered, positions=positions, normal=normal,
                        spacing=(slice_mm, row_mm, col_mm))


def write_series_manifest(path: str | os.PathLike, files: Sequence[str | os.PathLike],
                          series_uid: str = "") -> Path:
    """Write a ``.series`` manifest listing a series' files, if its content changed.

    Format: UTF-8 text, a magic first line, ``#`` comment lines (series UID and a
    fingerprint of every file's size and modification time), then one absolute path per
    line. The file is rewritten (atomically) only when its content changes, so caches keyed
    on the manifest's size and modification time (:class:`ichlib.dataset.VolumeCache`) stay
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
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(path, "series manifest not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read the series manifest ({exc})") from exc
    files = [Path(s) for s in (line.strip() for line in lines) if s and not s.startswith("#")]
    files = [f if f.is_absolute() else path.parent / f for f in files]
    if not files:
        raise DataError(path, "series manifest lists no file")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(path, f"{len(missing)} listed file(s) not found, e.g. {missing[0]}")
    return files


# --- internals -------------------------------------------------------------------------

def _is_12bit_bug(bits_stored: int, pixel_representation: int, intercept: float) -> bool:
    return bits_stored == 12 and pixel_representation == 0 and intercept > -100


_QUIET = threading.local()


class _UidNoiseFilter(logging.Filter):
    """Drop pydicom's "Invalid value for VR UI" log records while ichlib reads or writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(_QUIET, "depth", 0) and str(record.msg).startswith(_UID_NOISE))


_UID_NOISE = "Invalid value for VR UI"
_PYDICOM_LOGGER = logging.getLogger("pydicom")
if not any(isinstance(f, _UidNoiseFilter) for f in _PYDICOM_LOGGER.filters):
    _PYDICOM_LOGGER.addFilter(_UidNoiseFilter())


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's per-value warning (and log record) on RSNA's ``ID_...`` UIDs.

    The real RSNA files use ``ID_<hex>`` identifiers where DICOM expects digits and dots;
    pydicom warns for every such value read. Only that message is silenced, only inside
    ichlib's own reads and writes.
    """
    _QUIET.depth = getattr(_QUIET, "depth", 0) + 1
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_UID_NOISE)
            yield
    finally:
        _QUIET.depth -= 1


def _file_size(path: Path) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except OSError as exc:
        raise DataError(path, f"cannot read the file ({exc.strerror or exc})") from exc
    if size == 0:
        raise NotDicomError(path, "empty file (0 bytes)")
    return size


def _read_dataset(path: Path) -> pydicom.Dataset:
    _file_size(path)
    try:
        with _quiet_pydicom():
            return pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise NotDicomError(path, "not a DICOM file (no 'DICM' marker after the 128-byte "
                                  "preamble)") from exc
    except OSError as exc:
        raise DataError(path, f"cannot read the file ({exc.strerror or exc})") from exc
    except Exception as exc:
        raise DataError(path, f"DICOM file is unreadable ({type(exc).__name__}: {exc})") from exc


def _header_from_dataset(ds: pydicom.Dataset, path: Path, pixel_problem: str | None) -> SliceHeader:
    """Build a :class:`SliceHeader`; NotDicomError for DICOM that holds no image."""
    with _quiet_pydicom():
        meta = getattr(ds, "file_meta", None)
        sop_class = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
        if "Rows" not in ds or "Columns" not in ds:
            if sop_class and "Image Storage" not in _uid_name(sop_class):
                raise NotDicomError(path, f"DICOM file without an image ({_uid_name(sop_class)})")
            raise DataError(path, "DICOM image header lacks Rows/Columns (truncated file?)")
        ts = str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else ""
        if ts and not pydicom.uid.UID(ts).is_transfer_syntax:
            raise DataError(path, f"unknown transfer syntax {ts!r}; cannot read the pixel data")
        try:
            header = SliceHeader(
                path=path,
                sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
                series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
                study_uid=str(ds.get("StudyInstanceUID", "") or ""),
                patient_id=str(ds.get("PatientID", "") or ""),
                position=_floats(ds.get("ImagePositionPatient"), 3),
                orientation=_floats(ds.get("ImageOrientationPatient"), 6),
                rows=int(ds.Rows), columns=int(ds.Columns),
                pixel_spacing=_floats(ds.get("PixelSpacing"), 2),
                slice_thickness=_float_or_none(ds.get("SliceThickness")),
                instance_number=_int_or_none(ds.get("InstanceNumber")),
                transfer_syntax=ts or pydicom.uid.ImplicitVRLittleEndian,
                bits_allocated=int(ds.get("BitsAllocated", 16)),
                bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 16))),
                high_bit=int(ds.get("HighBit", int(ds.get("BitsStored", ds.get("BitsAllocated", 16))) - 1)),
                pixel_representation=int(ds.get("PixelRepresentation", 0)),
                samples=int(ds.get("SamplesPerPixel", 1)),
                frames=int(ds.get("NumberOfFrames", 1) or 1),
                rescale_intercept=float(ds.get("RescaleIntercept", 0) or 0),
                rescale_slope=float(ds.get("RescaleSlope", 1) or 1),
                pixel_problem=pixel_problem,
            )
        except (TypeError, ValueError) as exc:
            raise DataError(path, f"malformed image header ({exc})") from exc
    if not header.series_uid:
        raise DataError(path, "DICOM image has no SeriesInstanceUID")
    return header


def _pixel_element_problem(ds: pydicom.Dataset, element: bytes, tell: int, size: int) -> str | None:
    """Check the pixel data element that follows the header, without reading its value."""
    meta = getattr(ds, "file_meta", None)
    ts = pydicom.uid.UID(str(meta.TransferSyntaxUID)) if meta is not None and "TransferSyntaxUID" in meta else None
    if ts is not None and ts.is_deflated:
        return None  # file offsets are meaningless in a deflated stream
    implicit = ts.is_implicit_VR if ts is not None else True
    little = ts.is_little_endian if ts is not None else True
    end = "<" if little else ">"
    if len(element) < 8:
        return "no pixel data (the file ends after the header: truncated?)"
    group, elem = struct.unpack(f"{end}HH", element[:4])
    if (group, elem) != _PIXEL_DATA_TAG:
        return f"no (7FE0,0010) Pixel Data element (found ({group:04X},{elem:04X}) instead)"
    if implicit:
        length, start = struct.unpack(f"{end}I", element[4:8])[0], 8
    elif element[4:6] in _LONG_VRS:
        if len(element) < 12:
            return "pixel data element is cut off (truncated file)"
        length, start = struct.unpack(f"{end}I", element[8:12])[0], 12
    else:
        length, start = struct.unpack(f"{end}H", element[6:8])[0], 8
    available = size - tell - start
    if length == 0xFFFFFFFF:  # encapsulated (compressed) fragments
        return None if available > 0 else "pixel data is empty (truncated file?)"
    if available < length:
        return f"pixel data is truncated: the element declares {length} bytes, the file holds {available}"
    expected = _expected_bytes(ds)
    if expected is not None and ts is not None and not ts.is_compressed and length < expected:
        return f"pixel data is {length} bytes; Rows x Columns x BitsAllocated need {expected}"
    return None


def _loaded_pixel_problem(ds: pydicom.Dataset) -> str | None:
    """Pixel problem of a dataset read in full (pydicom keeps a short value as is)."""
    if "PixelData" not in ds:
        return "no pixel data (file truncated or not an image)"
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        return None
    ts = pydicom.uid.UID(str(meta.TransferSyntaxUID))
    if not ts.is_transfer_syntax or ts.is_compressed:
        return None  # an unknown syntax is refused by the header check
    expected = _expected_bytes(ds)
    with _quiet_pydicom():
        actual = len(ds.PixelData or b"")
    if expected is not None and actual < expected:
        return f"pixel data is truncated: {actual} bytes, Rows x Columns x BitsAllocated need {expected}"
    return None


def _expected_bytes(ds: pydicom.Dataset) -> int | None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.get("BitsAllocated", 16))
        n = rows * cols * int(ds.get("SamplesPerPixel", 1)) * int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    return (n * bits + 7) // 8


def _decode_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """Decode without touching ``ds`` (pydicom 3); pydicom 2.4 caches the array on ``ds``."""
    with _quiet_pydicom():
        try:
            from pydicom.pixels import pixel_array
        except ImportError:  # pydicom 2.4
            return ds.pixel_array
        return pixel_array(ds)


def _modality_lut(stored: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """HU via pydicom's modality LUT; a lone slope or intercept gets the other's default."""
    has_slope, has_intercept = "RescaleSlope" in ds, "RescaleIntercept" in ds
    if "ModalityLUTSequence" in ds or has_slope == has_intercept:
        return _apply_modality_lut(stored, ds)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return stored.astype(np.float64) * slope + intercept


def _padding_mask(ds: pydicom.Dataset, stored: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Pixels equal to PixelPaddingValue, or within [value, PixelPaddingRangeLimit]."""
    pad = ds.get("PixelPaddingValue")
    if pad is None or isinstance(pad, (bytes, list)) or pad == "":
        return np.zeros(stored.shape, dtype=bool)
    lo = int(stored_values(np.array([int(pad)]), bits, signed)[0])
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None or isinstance(limit, (bytes, list)) or limit == "":
        return stored == lo
    hi = int(stored_values(np.array([int(limit)]), bits, signed)[0])
    lo, hi = min(lo, hi), max(lo, hi)
    return (stored >= lo) & (stored <= hi)


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


def _check_size(layout: SeriesLayout) -> None:
    shape = layout.shape
    if max(shape) > MAX_EXTENT or math.prod(shape) > MAX_VOXELS:
        raise DataError(layout.headers[0].path.parent, f"series has an implausible shape {shape}; "
                        f"refusing to allocate it (limit {MAX_EXTENT} per axis, {MAX_VOXELS} voxels)")


def _slice_normal(orientation: np.ndarray, where: str | os.PathLike) -> np.ndarray:
    row, col = orientation[:3], orientation[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if abs(nr - 1) > 1e-2 or abs(nc - 1) > 1e-2 or abs(np.dot(row, col)) > 1e-2:
        raise DataError(where, f"ImageOrientationPatient {_fmt(orientation)} is not two orthogonal "
                               "unit vectors")
    normal = np.cross(row / nr, col / nc)
    return normal / np.linalg.norm(normal)


def _list_series(groups: dict[str, list[SliceHeader]]) -> str:
    items = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    text = ", ".join(f"{uid} ({len(hs)} file(s), e.g. {hs[0].path.name})" for uid, hs in items[:10])
    return text + (f", and {len(items) - 10} more" if len(items) > 10 else "")


def _example(headers: Sequence[SliceHeader], pred) -> str:
    return next(h.path.name for h in headers if pred(h))


def _transfer_syntax_name(uid: str) -> str:
    return _uid_name(uid) + (f" {uid}" if _uid_name(uid) != uid else "")


def _uid_name(uid: str) -> str:
    try:
        return pydicom.uid.UID(uid).name
    except Exception:
        return uid


def _floats(value, n: int) -> tuple[float, ...] | None:
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return values if len(values) == n and all(math.isfinite(v) for v in values) else None


def _float_or_none(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _join(values) -> str:
    return "" if values is None else "\\".join(repr(float(v)) for v in values)


def _split(text: str) -> tuple[float, ...] | None:
    return tuple(float(v) for v in text.split("\\")) if text else None
