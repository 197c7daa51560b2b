"""Explaining the model: Grad-CAM from the patient-level output to every slice, maps in the
scan's geometry, and how well maps localise the blood against model-free baselines."""

from ichlib.explain.baselines import chance_prior, intensity_map
from ichlib.explain.cam import (
    CANDIDATES,
    CamSpec,
    ScanAsBatch,
    ScanCAM,
    ScanGradCAM,
    ScanGradCAMPlusPlus,
    ScanHiResCAM,
    ScanLabelTarget,
    ScanLayerCAM,
    SliceLabelTarget,
    normalize_scan,
    scan_grad_cam,
    whole_scan_grad_cam,
)
from ichlib.explain.deletion import DeletionResult, deletion_test
from ichlib.explain.localization import (
    CamComparison,
    collect_localization,
    compare_cams,
    localization_table,
    localization_verdict,
)
from ichlib.explain.randomization import cascading_randomization
from ichlib.explain.report import (
    ScanExplanation,
    explain_scan,
    maps_to_volume,
    save_cam_nifti,
    write_cam_report,
)
from ichlib.explain.scores import energy_in_mask, pointing_game

__all__ = [
    "CANDIDATES", "CamComparison", "CamSpec", "DeletionResult", "ScanAsBatch", "ScanCAM", "ScanExplanation",
    "ScanGradCAM", "ScanGradCAMPlusPlus", "ScanHiResCAM", "ScanLabelTarget", "ScanLayerCAM",
    "SliceLabelTarget", "cascading_randomization", "chance_prior", "collect_localization",
    "compare_cams", "deletion_test", "energy_in_mask", "explain_scan", "intensity_map",
    "localization_table", "localization_verdict", "maps_to_volume", "normalize_scan",
    "pointing_game", "save_cam_nifti", "scan_grad_cam", "whole_scan_grad_cam", "write_cam_report",
]
