"""CT DICOM series: headers, pixels to HU, slice order, Enhanced CT frames, and the series loader.

See :mod:`ichlib.io.dicom.series` for the conventions (slice order along the normal, HU from
the modality LUT, padding to air).
"""

from ichlib.io.dicom.enhanced import frame_headers
from ichlib.io.dicom.headers import NotDicomError, SliceHeader, read_slice_header
from ichlib.io.dicom.ordering import SeriesLayout, order_slices
from ichlib.io.dicom.pixels import AIR_HU, dataset_to_hu, has_12bit_bug
from ichlib.io.dicom.series import (
    IgnoredFilesWarning,
    load_dicom_series,
    read_dicom_series_header,
    read_series_manifest,
    write_series_manifest,
)

__all__ = [
    "AIR_HU", "IgnoredFilesWarning", "NotDicomError", "SeriesLayout", "SliceHeader",
    "dataset_to_hu", "frame_headers", "has_12bit_bug", "load_dicom_series", "order_slices",
    "read_dicom_series_header", "read_series_manifest", "read_slice_header", "write_series_manifest",
]
