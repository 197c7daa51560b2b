"""One DICOM file's header, read without decoding pixels, and the checks it must pass before
its pixels can become HU."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import struct
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ichlib.errors import DataError
from ichlib.io.files import MAX_DICOM_BYTES, regular_file

# Explicit-VR value representations whose length field is 4 bytes (after 2 reserved bytes).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}


_PIXEL_DATA_TAG = (0x7FE0, 0x0010)


class NotDicomError(DataError):
    """A file is not a DICOM image (not DICOM at all, empty, or DICOM without pixels)."""


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
        modality: ``Modality`` ("" when absent).
        frame: For one frame of an enhanced (multi-frame) image, its 0-based index in the
            file; None for a single-frame file. Its geometry and rescale then come from the
            functional groups (:func:`frame_headers`).
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
    modality: str = ""
    frame: int | None = None

    @property
    def name(self) -> str:
        """The file's name, and the frame of an enhanced image (for messages)."""
        return self.path.name if self.frame is None else f"{self.path.name} (frame {self.frame + 1})"

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
            "modality": self.modality,
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
            modality=record.get("modality", ""),
        )


#: Columns of :meth:`SliceHeader.to_record`, in order.
RECORD_FIELDS: tuple[str, ...] = (
    "file", "sop_uid", "series_uid", "study_uid", "patient_id", "position", "orientation",
    "rows", "columns", "pixel_spacing", "slice_thickness", "instance_number", "transfer_syntax",
    "bits_allocated", "bits_stored", "high_bit", "pixel_representation", "samples", "frames",
    "rescale_intercept", "rescale_slope", "pixel_problem", "modality",
)


def read_slice_header(path: str | os.PathLike) -> SliceHeader:
    """Read one file's DICOM header (``stop_before_pixels``), and check its pixel element.

    The pixel data is not read, but its element header is: a declared length beyond the
    end of the file, or shorter than ``Rows x Columns x BitsAllocated``, is recorded in
    :attr:`SliceHeader.pixel_problem`.

    Raises:
        NotDicomError: The file is empty, not DICOM, or DICOM without an image.
        DataError: The file is DICOM but its header cannot be read, or it cannot be opened.
    """
    return read_header_dataset(path)[1]


def read_header_dataset(path: str | os.PathLike) -> tuple[pydicom.Dataset, SliceHeader]:
    """The header dataset (``stop_before_pixels``) and :class:`SliceHeader` of one file
    (see :func:`read_slice_header`)."""
    path = Path(path)
    size = _file_size(path)
    try:
        with quiet_pydicom(), open(path, "rb") as fh:
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
    return ds, replace(header, pixel_problem=_pixel_element_problem(ds, element, pixel_tell, size))


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
    if header.frames != 1 and header.frame is None:
        raise DataError(path, multiframe_problem(header.frames))
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


def multiframe_problem(frames: int) -> str:
    """Why a multi-frame file cannot be read as one slice."""
    return (f"multi-frame image ({frames} frames) read as one slice (no per-frame functional "
            "groups, or a layout of one image per file); ichlib reads single-frame series and "
            "Enhanced CT files")


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
def quiet_pydicom() -> Iterator[None]:
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
    size = regular_file(path, "DICOM file", MAX_DICOM_BYTES)
    if size == 0:
        raise NotDicomError(path, "empty file (0 bytes)")
    return size


def _read_dataset(path: Path) -> pydicom.Dataset:
    _file_size(path)
    try:
        with quiet_pydicom():
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
    with quiet_pydicom():
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
                rescale_intercept=_rescale(ds, "RescaleIntercept", 0.0, path),
                rescale_slope=_rescale(ds, "RescaleSlope", 1.0, path),
                pixel_problem=pixel_problem,
                modality=str(ds.get("Modality", "") or "").strip().upper(),
            )
        except (TypeError, ValueError) as exc:
            raise DataError(path, f"malformed image header ({exc})") from exc
        padding_value(ds, path)  # a padding value that is not a number is refused here
    if not header.series_uid:
        raise DataError(path, "DICOM image has no SeriesInstanceUID")
    if header.modality not in CT_MODALITIES:
        raise DataError(path, f"Modality {header.modality} ({_uid_name(sop_class) or 'no SOP class'}) "
                              "is not CT; ichlib reads CT in Hounsfield units")
    return header


#: Modalities read as CT ("": files that do not say, such as some anonymised exports).
CT_MODALITIES = ("CT", "")


def _rescale(ds: pydicom.Dataset, keyword: str, default: float, path: Path) -> float:
    """``RescaleSlope`` or ``RescaleIntercept`` of ``ds`` (see :func:`rescale_value`)."""
    return rescale_value(ds.get(keyword), keyword, default, path)


def rescale_value(raw: object, keyword: str, default: float, path: str | os.PathLike | None) -> float:
    """A ``RescaleSlope`` or ``RescaleIntercept`` value as a finite float (a slope must not be 0).

    Raises:
        DataError: NaN, Inf, a zero slope, or not a number.
    """
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise DataError(path, f"{keyword} {raw!r} is not a number") from None
    if not math.isfinite(value) or (keyword == "RescaleSlope" and value == 0):
        raise DataError(path, f"{keyword} is {value}; the stored values cannot be turned into HU")
    return value


def padding_value(ds: pydicom.Dataset, path: str | os.PathLike | None) -> tuple[int, int] | None:
    """``(PixelPaddingValue, PixelPaddingRangeLimit or the value)`` as stored integers, or None.

    Raises:
        DataError: A padding value (or range limit) that is not a whole number.
    """
    values = []
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    for keyword in ("PixelPaddingValue", "PixelPaddingRangeLimit"):
        raw = ds.get(keyword)
        if raw is None or raw == "" or (isinstance(raw, (bytes, list)) and not len(raw)):
            values.append(None)
            continue
        if isinstance(raw, bytes) and len(raw) == 2:  # US or SS left undecided by the reader
            raw = int.from_bytes(raw, "little", signed=signed)
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise DataError(path, f"{keyword} {raw!r} is not a number; cannot tell padding from "
                                  "image") from None
        if not math.isfinite(number) or number != int(number):
            raise DataError(path, f"{keyword} {raw!r} is not a whole number")
        values.append(int(number))
    if values[0] is None:
        return None
    return values[0], values[1] if values[1] is not None else values[0]


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
    with quiet_pydicom():
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


def _join(values) -> str:
    return "" if values is None else "\\".join(repr(float(v)) for v in values)


def _split(text: str) -> tuple[float, ...] | None:
    return tuple(float(v) for v in text.split("\\")) if text else None
