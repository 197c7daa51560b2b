"""Enhanced (multi-frame) CT: one file holding N frames, whose geometry and rescale sit in
functional groups rather than in the top-level header.

Each frame becomes a :class:`~ichlib.io.dicom.headers.SliceHeader` of its own (``frame`` set),
so a multi-frame file orders, checks and loads like a classic one-slice-per-file series:

- position: the frame's Plane Position (Patient) group, ``ImagePositionPatient``;
- orientation: its Plane Orientation (Patient) group, ``ImageOrientationPatient``;
- pixel spacing and slice thickness: its Pixel Measures group;
- rescale slope and intercept: its Pixel Value Transformation group.

Each is looked up in the frame's item of ``PerFrameFunctionalGroupsSequence`` first, then in
``SharedFunctionalGroupsSequence``, then at the top level of the dataset. pydicom reads the
sequences and decodes all frames at once (``pixel_array`` gives ``[frames, rows, columns]``);
it has no helper that resolves functional groups, so the lookup is here.
"""

from __future__ import annotations

from dataclasses import replace

import pydicom

from ichlib.errors import DataError
from ichlib.io.dicom.headers import (
    SliceHeader,
    _float_or_none,
    _floats,
    multiframe_problem,
    quiet_pydicom,
    rescale_value,
)

#: ``(functional group sequence, attribute)`` of each frame-level value.
_GROUPS = {
    "position": ("PlanePositionSequence", "ImagePositionPatient"),
    "orientation": ("PlaneOrientationSequence", "ImageOrientationPatient"),
    "pixel_spacing": ("PixelMeasuresSequence", "PixelSpacing"),
    "slice_thickness": ("PixelMeasuresSequence", "SliceThickness"),
    "rescale_slope": ("PixelValueTransformationSequence", "RescaleSlope"),
    "rescale_intercept": ("PixelValueTransformationSequence", "RescaleIntercept"),
}


def is_enhanced(ds: pydicom.Dataset) -> bool:
    """True for an image whose frames are described by per-frame functional groups."""
    return "PerFrameFunctionalGroupsSequence" in ds


def frame_headers(ds: pydicom.Dataset, header: SliceHeader) -> list[SliceHeader]:
    """One header per frame of an enhanced image; ``[header]`` for any other image.

    Args:
        ds: The file's dataset (pixel data not needed).
        header: Its top-level header (:func:`~ichlib.io.dicom.headers.read_slice_header`).

    Raises:
        DataError: A multi-frame image without functional groups, groups that do not
            describe each frame once, or a frame's rescale that is not a finite number.
    """
    if not is_enhanced(ds):
        if header.frames > 1:  # say so before the missing geometry is noticed
            raise DataError(header.path, multiframe_problem(header.frames))
        return [header]
    with quiet_pydicom():
        per_frame = list(ds.PerFrameFunctionalGroupsSequence)
        shared_sequence = ds.get("SharedFunctionalGroupsSequence")
        shared = shared_sequence[0] if shared_sequence else None
        if len(per_frame) != header.frames:
            raise DataError(header.path, f"{len(per_frame)} per-frame functional group item(s) for "
                                         f"{header.frames} frame(s); the frames cannot be placed")
        return [replace(header, frame=i, **frame_geometry(item, shared, ds, header))
                for i, item in enumerate(per_frame)]


def frame_geometry(item: pydicom.Dataset, shared: pydicom.Dataset | None, ds: pydicom.Dataset,
                   header: SliceHeader) -> dict:
    """A frame's position, orientation, spacing, thickness and rescale (see the module docstring).

    Values that are absent or malformed are None (the series checks then refuse the frame,
    saying what is missing); the rescale defaults to slope 1, intercept 0.
    """
    raw = {name: _lookup(item, shared, ds, *where) for name, where in _GROUPS.items()}
    return {
        "position": _floats(raw["position"], 3),
        "orientation": _floats(raw["orientation"], 6),
        "pixel_spacing": _floats(raw["pixel_spacing"], 2),
        "slice_thickness": _float_or_none(raw["slice_thickness"]),
        "rescale_slope": rescale_value(raw["rescale_slope"], "RescaleSlope", 1.0, header.path),
        "rescale_intercept": rescale_value(raw["rescale_intercept"], "RescaleIntercept", 0.0, header.path),
    }


def _lookup(item: pydicom.Dataset, shared: pydicom.Dataset | None, ds: pydicom.Dataset,
            sequence: str, keyword: str) -> object:
    """``keyword`` from the frame's group, else the shared group, else the dataset's top level."""
    for group in (item, shared):
        if group is None or sequence not in group:
            continue
        entries = group[sequence].value
        if entries and keyword in entries[0]:
            return entries[0][keyword].value
    return ds.get(keyword)
