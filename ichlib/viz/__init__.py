"""Figures, one module per topic: slices and montages, training curves and ROC, Grad-CAM, and
the interactive slice viewer."""

from ichlib.viz.cam import (
    plot_cam_gallery,
    plot_cam_montage,
    plot_cam_slice,
    plot_localization,
    plot_slice_importance,
    save_cam_montage,
)
from ichlib.viz.figures import SUBTYPE_COLORS, SYNTHETIC_NOTE, montage, save_figure, show_slice
from ichlib.viz.phantom import plot_phantom_findings
from ichlib.viz.training import (
    confusion_counts,
    plot_confusion_matrices,
    plot_history,
    plot_label_aucs,
    plot_roc_curves,
    plot_shortcut_audit,
)
from ichlib.viz.viewer import SliceViewer

__all__ = [
    "SUBTYPE_COLORS", "SYNTHETIC_NOTE", "SliceViewer", "confusion_counts", "montage",
    "plot_cam_gallery", "plot_cam_montage", "plot_cam_slice", "plot_confusion_matrices",
    "plot_history", "plot_label_aucs", "plot_localization", "plot_phantom_findings",
    "plot_roc_curves", "plot_shortcut_audit", "plot_slice_importance", "save_cam_montage",
    "save_figure", "show_slice",
]
