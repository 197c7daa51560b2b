"""Figures, one module per topic: slices and montages, training curves and ROC, Grad-CAM, and
the interactive slice viewer."""

from ichlib._lazy import lazy_exports

_NAMES = {
    "plot_cam_montage": ".cam",
    "plot_cam_gallery": ".cam",
    "plot_cam_slice": ".cam",
    "plot_localization": ".cam",
    "plot_slice_importance": ".cam",
    "SliceViewer": ".viewer",
    "plot_phantom_findings": ".phantom",
    "write_cam_report": ".cam",
    "SUBTYPE_COLORS": ".figures",
    "SYNTHETIC_NOTE": ".figures",
    "montage": ".figures",
    "save_figure": ".figures",
    "show_slice": ".figures",
    "confusion_counts": ".training",
    "plot_confusion_matrices": ".training",
    "plot_history": ".training",
    "plot_label_aucs": ".training",
    "plot_shortcut_audit": ".training",
    "plot_roc_curves": ".training",
}
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
__all__ = sorted(_NAMES)
