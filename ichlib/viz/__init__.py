"""Figures, one module per topic: slices and montages, the data notebooks' figures, training
curves and ROC, Grad-CAM, and the interactive slice viewer."""

from ichlib.viz.cam import (
    plot_cam_gallery,
    plot_cam_montage,
    plot_cam_slice,
    plot_localization,
    plot_slice_importance,
    save_cam_montage,
)
from ichlib.viz.dataset import (
    plot_composite,
    plot_contrast,
    plot_cooccurrence,
    plot_hu_per_tissue,
    plot_label_prevalence,
    plot_repeats,
    plot_sampling,
    plot_scan_lengths,
    plot_subtype_examples,
    plot_windows,
)
from ichlib.viz.figures import (
    SUBTYPE_COLORS,
    SYNTHETIC_NOTE,
    abbreviation_key,
    montage,
    save_figure,
    show_slice,
    slice_title,
)
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
    "SUBTYPE_COLORS", "SYNTHETIC_NOTE", "SliceViewer", "abbreviation_key", "confusion_counts",
    "montage", "plot_cam_gallery", "plot_cam_montage", "plot_cam_slice", "plot_composite",
    "plot_confusion_matrices", "plot_contrast", "plot_cooccurrence", "plot_history",
    "plot_hu_per_tissue", "plot_label_aucs", "plot_label_prevalence", "plot_localization",
    "plot_phantom_findings", "plot_repeats", "plot_roc_curves", "plot_sampling",
    "plot_scan_lengths", "plot_shortcut_audit", "plot_slice_importance", "plot_subtype_examples",
    "plot_windows", "save_cam_montage", "save_figure", "show_slice", "slice_title",
]
