"""CT DICOM series: headers, pixels to HU, slice order, Enhanced CT frames, and the series loader.

See :mod:`ichlib.io.dicom.series` for the conventions (slice order along the normal, HU from
the modality LUT, padding to air).
"""

from ichlib._lazy import lazy_exports

_NAMES = {
    "frame_headers": ".enhanced",
    "NotDicomError": ".headers",
    "SliceHeader": ".headers",
    "read_slice_header": ".headers",
    "SeriesLayout": ".ordering",
    "order_slices": ".ordering",
    "AIR_HU": ".pixels",
    "dataset_to_hu": ".pixels",
    "has_12bit_bug": ".pixels",
    "IgnoredFilesWarning": ".series",
    "load_dicom_series": ".series",
    "read_dicom_series_header": ".series",
    "read_series_headers": ".series",
    "read_series_manifest": ".series",
    "write_series_manifest": ".series",
}
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
__all__ = sorted(_NAMES)
