"""Explaining the model: Grad-CAM from the patient-level output to every slice, maps in the
scan's geometry, and how well maps localise the blood against model-free baselines."""

from ichlib._lazy import lazy_exports

_NAMES = {
    "ScanCAM": ".cam",
    "ScanLabelTarget": ".cam",
    "SliceLabelTarget": ".cam",
    "normalize_scan": ".cam",
    "scan_grad_cam": ".cam",
    "whole_scan_grad_cam": ".cam",
    "cascading_randomization": ".randomization",
    "DeletionResult": ".deletion",
    "deletion_test": ".deletion",
    "collect_localization": ".localization",
    "energy_in_mask": ".scores",
    "intensity_map": ".baselines",
    "chance_prior": ".baselines",
    "compare_cams": ".localization",
    "CamSpec": ".cam",
    "CANDIDATES": ".cam",
    "localization_verdict": ".localization",
    "localization_table": ".localization",
    "pointing_game": ".scores",
    "ScanExplanation": ".report",
    "explain_scan": ".report",
    "maps_to_volume": ".report",
    "save_cam_nifti": ".report",
}
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
__all__ = sorted(_NAMES)
