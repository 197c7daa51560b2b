"""Slice order and geometry of one DICOM series, from headers alone.

Slices are sorted by position along the slice normal ``n = row_cos x col_cos``
(``ImagePositionPatient . n``, ascending), which is right under gantry tilt where ``z``
alone can mis-order them. ``InstanceNumber`` and file names are never used.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ichlib.errors import DataError, DataWarning
from ichlib.io.dicom.headers import SliceHeader

#: A gap wider than this many median spacings means missing slices.
MAX_GAP_RATIO = 1.5


#: Two slices closer than this along the normal (mm) sit at the same position.
DUPLICATE_TOLERANCE_MM = 0.01


#: Largest difference between two slices' direction cosines treated as the same orientation.
ORIENTATION_TOLERANCE = 1e-3


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
                               f"ImageOrientationPatient (e.g. {missing[0].name}; in an enhanced "
                               "image, the Plane Position and Plane Orientation functional groups); "
                               "slice order cannot be determined")
    no_spacing = [h for h in headers if h.pixel_spacing is None]
    if no_spacing:
        raise DataError(where, f"{len(no_spacing)} slice(s) lack PixelSpacing (e.g. "
                               f"{no_spacing[0].name})")
    first = np.asarray(headers[0].orientation, dtype=np.float64)
    for h in headers[1:]:
        if np.abs(np.asarray(h.orientation) - first).max() > ORIENTATION_TOLERANCE:
            raise DataError(where, f"slices have different orientations: {headers[0].name} "
                                   f"has {_fmt(first)}, {h.name} has {_fmt(h.orientation)} "
                                   "(a localizer in the series?)")
    spacing0 = np.asarray(headers[0].pixel_spacing)
    for h in headers[1:]:
        if np.abs(np.asarray(h.pixel_spacing) - spacing0).max() > 1e-3 * max(1.0, spacing0.max()):
            raise DataError(where, f"slices have different PixelSpacing: {headers[0].name} "
                                   f"has {_fmt(spacing0)}, {h.name} has {_fmt(h.pixel_spacing)}")
    if not all(math.isfinite(v) and v > 0 for v in spacing0):
        warnings.warn(f"{where}: PixelSpacing {_fmt(spacing0)} is not a positive voxel size; the "
                      "scan's geometry is unknown (prediction does not need it; maps in its "
                      "geometry cannot be written)", DataWarning, stacklevel=3)
    normal = _slice_normal(first, where)
    along = np.array([np.dot(np.asarray(h.position, dtype=np.float64), normal) for h in headers])
    order = np.argsort(along, kind="stable")
    ordered = tuple(headers[i] for i in order)
    positions = along[order]
    diffs = np.diff(positions)
    dup = np.flatnonzero(diffs < DUPLICATE_TOLERANCE_MM)
    if len(dup):
        pairs = ", ".join(f"{ordered[i].name} and {ordered[i + 1].name} at "
                          f"{positions[i]:.2f} mm" for i in dup[:5])
        raise DataError(where, f"{len(dup)} duplicate slice position(s) along the normal: {pairs}")
    if len(diffs):
        slice_mm = float(np.median(diffs))
    else:
        slice_mm = float(headers[0].slice_thickness or 1.0)
    if max_gap_ratio is not None and len(diffs) >= 2:
        gaps = np.flatnonzero(diffs > max_gap_ratio * slice_mm)
        if len(gaps):
            listing = ", ".join(f"{diffs[i]:.2f} mm between {ordered[i].name} "
                                f"({positions[i]:.2f}) and {ordered[i + 1].name} "
                                f"({positions[i + 1]:.2f})" for i in gaps[:5])
            raise DataError(where, f"{len(gaps)} gap(s) wider than {max_gap_ratio:g} x the median "
                                   f"spacing {slice_mm:.2f} mm (missing slices?): {listing}")
    row_mm, col_mm = (float(s) for s in spacing0)
    return SeriesLayout(headers=ordered, positions=positions, normal=normal,
                        spacing=(slice_mm, row_mm, col_mm))


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
    text = ", ".join(f"{uid} ({len(hs)} file(s), e.g. {hs[0].name})" for uid, hs in items[:10])
    return text + (f", and {len(items) - 10} more" if len(items) > 10 else "")


def _example(headers: Sequence[SliceHeader], pred) -> str:
    return next(h.name for h in headers if pred(h))


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
