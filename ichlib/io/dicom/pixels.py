"""One DICOM CT image's pixels to HU: stored values, RSNA's 12-bit bug, the modality LUT,
padding and the outside-the-field-of-view ring to air."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom

from ichlib.errors import DataError
from ichlib.io.dicom.headers import (
    SliceHeader,
    _header_from_dataset,
    _is_12bit_bug,
    _loaded_pixel_problem,
    _transfer_syntax_name,
    check_slice_header,
    padding_value,
    quiet_pydicom,
)

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut as _apply_modality_lut
except ImportError:  # pydicom 2.4
    from pydicom.pixel_data_handlers.util import apply_modality_lut as _apply_modality_lut

#: HU written where the scanner stored no image.
AIR_HU = -1000.0


#: Rescaled values below this are outside the reconstruction field of view (scanners write
#: -2000 or -3024 there); no tissue, air included, is below about -1024 HU.
OUTSIDE_FOV_HU = -1500.0


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
            truncated, compressed without a decoder, or cannot be decoded, or its rescale
            gives HU that are not finite (a RescaleSlope of 1e38 overflows float32).
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
    stored = _stored_values(raw, header.bits_stored, signed)
    with np.errstate(over="ignore", invalid="ignore"):  # refused below, naming the slice
        hu = _modality_lut(stored, ds).astype(np.float32)
    padding = _padding_mask(ds, stored, header.bits_stored, signed, where)
    _refuse_non_finite(hu, padding, header, where, "ModalityLUTSequence" in ds)
    hu[padding] = AIR_HU
    hu[hu < OUTSIDE_FOV_HU] = AIR_HU
    return hu


def frames_to_hu(ds: pydicom.Dataset, headers: list[SliceHeader]) -> dict[int, np.ndarray]:
    """The frames of an enhanced (multi-frame) CT image as float32 HU ``[Rows, Columns]`` each.

    All frames are decoded at once; each gets its own rescale (from
    :func:`~ichlib.io.dicom.enhanced.frame_headers`), then padding and outside-the-field-of-view
    pixels become :data:`AIR_HU`, as for a single-frame image.

    Args:
        ds: The file's dataset, read with its pixel data.
        headers: The headers of the frames wanted (``frame`` set), all of this file.

    Returns:
        HU per frame index.

    Raises:
        DataError: If the pixel data cannot be decoded into ``[frames, Rows, Columns]``, or
            a frame's rescale gives HU that are not finite (naming the frame).
    """
    first = headers[0]
    check_slice_header(first)
    try:
        raw = np.asarray(_decode_pixels(ds))
    except Exception as exc:
        name = _transfer_syntax_name(first.transfer_syntax)
        raise DataError(first.path, f"could not decode the pixel data ({name}): "
                                    f"{type(exc).__name__}: {exc}") from exc
    if raw.shape != (first.frames, first.rows, first.columns):
        raise DataError(first.path, f"decoded pixel array has shape {raw.shape}, the header says "
                                    f"{first.frames} frames of {first.rows}x{first.columns}")
    signed = first.pixel_representation == 1
    out = {}
    for header in headers:
        stored = _stored_values(raw[header.frame], header.bits_stored, signed)
        with np.errstate(over="ignore", invalid="ignore"):  # refused below, naming the frame
            hu = (stored.astype(np.float64) * header.rescale_slope
                  + header.rescale_intercept).astype(np.float32)
        padding = _padding_mask(ds, stored, header.bits_stored, signed, header.path)
        _refuse_non_finite(hu, padding, header, header.path)
        hu[padding] = AIR_HU
        hu[hu < OUTSIDE_FOV_HU] = AIR_HU
        out[header.frame] = hu
    return out


def _refuse_non_finite(hu: np.ndarray, padding: np.ndarray, header: SliceHeader,
                       where: str | os.PathLike | None, lut: bool = False) -> None:
    """Refuse a slice whose rescaled values (padding aside) are not all finite float32 HU.

    A finite but absurd ``RescaleSlope`` (1e38, say) overflows float32 to infinity; such a
    slice would pass into the volume as thousands of infinite voxels.

    Raises:
        DataError: Naming the file, the slice (``InstanceNumber``, or the frame of an
            enhanced file), how many values are not finite, and the rescale that made them.
    """
    bad = ~np.isfinite(hu) & ~padding
    if not bad.any():
        return
    if header.frame is not None:
        which = f"frame {header.frame + 1} of {header.frames}"
    elif header.instance_number is not None:
        which = f"slice InstanceNumber {header.instance_number}"
    else:
        which = "the slice"
    values = hu[bad]
    kinds = ", ".join(name for name, n in (("+inf", np.isposinf(values).sum()),
                                           ("-inf", np.isneginf(values).sum()),
                                           ("NaN", np.isnan(values).sum())) if n)
    rescale = ("its ModalityLUTSequence" if lut else
               f"RescaleSlope {header.rescale_slope:g} and RescaleIntercept {header.rescale_intercept:g}")
    raise DataError(where, f"{which}: {rescale} turn {int(bad.sum())} of {bad.size} stored value(s) "
                           f"into HU that are not finite ({kinds}; beyond float32); refusing the file")


def has_12bit_bug(ds: pydicom.Dataset) -> bool:
    """True for an image whose 12-bit stored values are signed though the header says not.

    Some RSNA 2019 brain CT images have ``BitsStored = 12``, ``PixelRepresentation = 0``
    (unsigned) and a ``RescaleIntercept`` near 0 (the test is ``> -100``). Read as
    unsigned, 12 bits with that intercept give 0..4095 HU: no air, which a head CT always
    has, so the header cannot be right. The values are 12-bit two's complement: air
    (-1000 HU) is stored as 3096 and the -2000 HU outside the field of view as 2096. The
    fix (:func:`_stored_values` with ``signed=True``) maps stored ``v >= 2048`` to
    ``v - 4096`` *before* the rescale.

    The fix widely shared during the competition instead added 1000 and wrapped at 4096,
    which only moves values above 3096; stored 2048..3095 (here the outside-the-FOV ring at
    -2000 HU) would become bright 2048..3095 HU "bone". Reading the 12 bits as signed needs
    no magic offset and gives both right.
    """
    return _is_12bit_bug(int(ds.get("BitsStored", 16)), int(ds.get("PixelRepresentation", 0)),
                         float(ds.get("RescaleIntercept", 0) or 0))


def _stored_values(raw: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Stored pixel values as int32: the low ``bits_stored`` bits, two's complement if signed.

    Works the same whether the decoder left the unused high bits as they were in the file
    (pydicom 2) or cleared / sign-extended them (pydicom 3). Returns a new array.
    """
    values = np.asarray(raw).astype(np.int64) & ((1 << bits_stored) - 1)
    if signed:
        values[values >= (1 << (bits_stored - 1))] -= 1 << bits_stored
    return values.astype(np.int32)


def _decode_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """Decode without touching ``ds`` (pydicom 3); pydicom 2.4 caches the array on ``ds``."""
    with quiet_pydicom():
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


def _padding_mask(ds: pydicom.Dataset, stored: np.ndarray, bits: int, signed: bool,
                  path: str | os.PathLike | None = None) -> np.ndarray:
    """Pixels equal to PixelPaddingValue, or within [value, PixelPaddingRangeLimit].

    Raises:
        DataError: A padding value that is not a whole number.
    """
    padding = padding_value(ds, path)
    if padding is None:
        return np.zeros(stored.shape, dtype=bool)
    lo, hi = (int(_stored_values(np.array([v]), bits, signed)[0]) for v in padding)
    lo, hi = min(lo, hi), max(lo, hi)
    return (stored >= lo) & (stored <= hi)
