"""ichlib: intracranial hemorrhage detection on head CT with a CNN + BiLSTM.

The public names below are the ones the notebooks and users rely on; keep them stable.
Results on the synthetic phantom are synthetic: nothing here is a clinical tool.

Every name is imported on first use, so ``import ichlib`` (and ``ichlib --help``) stays
quick: the subpackages pull in PyTorch, pandas and pydicom only when a name needs them.

The package, by the stages data flows through (lower layers never import upper ones):

- :mod:`ichlib.io`: scans (NIfTI, DICOM), label tables (CT-ICH, RSNA), checks, safe writes;
- :mod:`ichlib.preprocess`: windows, resizing, slice sampling, augmentation, splits, cache,
  the dataset;
- :mod:`ichlib.model`, :mod:`ichlib.losses`, :mod:`ichlib.checkpoint`, :mod:`ichlib.predict`;
- :mod:`ichlib.training`: the loop, the run, metrics, the intensity baseline, two stages,
  ``torchrun``;
- :mod:`ichlib.explain`: Grad-CAM and how well it localises;
- :mod:`ichlib.viz`: figures;
- :mod:`ichlib.synthetic`: the phantom; :mod:`ichlib.course`: the notebooks' setup.
"""

from importlib import import_module

from ichlib.version import __version__

_LAZY = {
    # errors and labels
    "IchlibError": "ichlib.errors", "DataError": "ichlib.errors", "ConfigError": "ichlib.errors",
    "CheckpointError": "ichlib.errors", "WriteError": "ichlib.errors", "RunInterrupted": "ichlib.errors",
    "DataWarning": "ichlib.errors", "LABELS": "ichlib.labels", "SUBTYPES": "ichlib.labels",
    # io
    "Volume": "ichlib.io", "load_volume": "ichlib.io", "load_mask": "ichlib.io",
    "save_volume": "ichlib.io", "save_mask": "ichlib.io", "load_dicom_series": "ichlib.io",
    "CtIchData": "ichlib.io", "Problem": "ichlib.io", "read_ct_ich": "ichlib.io",
    "read_rsna": "ichlib.io", "read_dataset": "ichlib.io", "detect_format": "ichlib.io",
    "check_dataset": "ichlib.io", "label_counts": "ichlib.io", "cooccurrence": "ichlib.io",
    # preprocess
    "WINDOWS": "ichlib.preprocess", "window": "ichlib.preprocess", "multi_window": "ichlib.preprocess",
    "resize_slices": "ichlib.preprocess", "uniform_indices": "ichlib.preprocess",
    "patient_split": "ichlib.preprocess", "kfold_split": "ichlib.preprocess", "cv_split": "ichlib.preprocess",
    "rsna_group_split": "ichlib.preprocess", "PreprocessConfig": "ichlib.preprocess",
    "ScanDataset": "ichlib.preprocess", "prepare_scan": "ichlib.preprocess",
    "sampled_mask": "ichlib.preprocess", "intracranial_mask": "ichlib.preprocess",
    "lesion_contrast": "ichlib.preprocess", "ScanAugment": "ichlib.preprocess",
    # model, checkpoints, prediction
    "CNNBiLSTM": "ichlib.model", "ModelOutput": "ichlib.model", "ScanSliceLoss": "ichlib.losses",
    "load_checkpoint": "ichlib.checkpoint", "model_from_checkpoint": "ichlib.checkpoint",
    "Predictor": "ichlib.predict", "predict_scan": "ichlib.predict", "predict_files": "ichlib.predict",
    # training
    "TrainConfig": "ichlib.training", "fit": "ichlib.training", "train_one_epoch": "ichlib.training",
    "evaluate": "ichlib.training", "RunLog": "ichlib.training", "results_table": "ichlib.training",
    "run_intensity_baseline": "ichlib.training", "prepare_data": "ichlib.training",
    "build_model": "ichlib.training", "build_criterion": "ichlib.training",
    "make_optimizer": "ichlib.training", "make_loader": "ichlib.training",
    "make_eval_loader": "ichlib.training", "comparison_table": "ichlib.training",
    "patient_outcomes": "ichlib.training", "read_metrics": "ichlib.training",
    "beats_baseline": "ichlib.training", "cross_validate": "ichlib.training",
    "meets_bar": "ichlib.training", "run_position_baseline": "ichlib.training",
    "audit_checkpoint": "ichlib.training", "compare_runs": "ichlib.training",
    "paired_auc_difference": "ichlib.training",
    # explain
    "scan_grad_cam": "ichlib.explain", "ScanCAM": "ichlib.explain", "ScanLabelTarget": "ichlib.explain",
    "SliceLabelTarget": "ichlib.explain", "explain_scan": "ichlib.explain",
    "cascading_randomization": "ichlib.explain", "deletion_test": "ichlib.explain", "intensity_map": "ichlib.explain",
    "chance_prior": "ichlib.explain", "compare_cams": "ichlib.explain", "CamSpec": "ichlib.explain",
    "energy_in_mask": "ichlib.explain", "pointing_game": "ichlib.explain",
    "localization_table": "ichlib.explain", "collect_localization": "ichlib.explain",
    "localization_verdict": "ichlib.explain", "CANDIDATES": "ichlib.explain",
    # figures
    "SYNTHETIC_NOTE": "ichlib.viz", "SUBTYPE_COLORS": "ichlib.viz", "show_slice": "ichlib.viz",
    "montage": "ichlib.viz", "save_figure": "ichlib.viz", "write_cam_report": "ichlib.viz",
    "SliceViewer": "ichlib.viz", "plot_history": "ichlib.viz", "plot_roc_curves": "ichlib.viz",
    "confusion_counts": "ichlib.viz", "plot_confusion_matrices": "ichlib.viz",
    "plot_cam_slice": "ichlib.viz", "plot_cam_montage": "ichlib.viz", "plot_cam_gallery": "ichlib.viz",
    "plot_slice_importance": "ichlib.viz", "plot_localization": "ichlib.viz",
    "plot_phantom_findings": "ichlib.viz", "plot_label_aucs": "ichlib.viz",
    "plot_shortcut_audit": "ichlib.viz",
    # the phantom and the course
    "write_synthetic_ct_ich": "ichlib.synthetic", "write_synthetic_rsna": "ichlib.synthetic",
    "course_paths": "ichlib.course", "ensure_synthetic": "ichlib.course",
    "COURSE_PATIENTS": "ichlib.course", "is_synthetic": "ichlib.io.folder",
}


#: Submodules reachable as attributes after ``import ichlib`` (``ichlib.course.setup``).
_SUBMODULES = ("io", "preprocess", "model", "losses", "checkpoint", "predict", "device", "training",
               "explain", "viz", "synthetic", "course", "labels", "errors")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return import_module(f"ichlib.{name}")
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ichlib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


__all__ = ["__version__", *_LAZY]
