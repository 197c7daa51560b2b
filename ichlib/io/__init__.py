"""Reading data: scans (NIfTI, DICOM), label tables (CT-ICH, RSNA), dataset checks, safe writes.

The lowest layer of ichlib: nothing here imports preprocessing, models or training.
"""

from ichlib._lazy import lazy_exports

_NAMES = {
    "atomic_open": ".atomic",
    "atomic_path": ".atomic",
    "atomic_write_text": ".atomic",
    "remove_stale_temporaries": ".atomic",
    "default_cache_dir": ".cachedir",
    "CheckReport": ".check",
    "check_dataset": ".check",
    "check_rsna": ".check",
    "read_ct_ich": ".ctich",
    "load_dicom_series": ".dicom.series",
    "read_dicom_series_header": ".dicom.series",
    "detect_format": ".folder",
    "read_dataset": ".folder",
    "regular_file": ".files",
    "is_dicom_series": ".load",
    "load_mask": ".load",
    "load_volume": ".load",
    "read_header": ".load",
    "save_like": ".nifti",
    "save_mask": ".nifti",
    "save_volume": ".nifti",
    "check_checkpoint_file": ".sniff",
    "describe_file": ".sniff",
    "RsnaData": ".rsna",
    "read_rsna": ".rsna",
    "CtIchData": ".tables",
    "Problem": ".tables",
    "cooccurrence": ".tables",
    "label_counts": ".tables",
    "largest_lesion_slice": ".tables",
    "MAX_EXTENT": ".volume",
    "MAX_VOXELS": ".volume",
    "Volume": ".volume",
    "VolumeHeader": ".volume",
}
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
__all__ = sorted(_NAMES)
