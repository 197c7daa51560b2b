"""ichlib: intracranial hemorrhage detection on head CT with a CNN + BiLSTM.

The names here are the ones the notebooks and the README use; keep them stable. Everything
else is imported from its subpackage (``ichlib.io.Volume``, ``ichlib.explain.scan_grad_cam``).
Results on the synthetic phantom are synthetic: nothing here is a clinical tool.

The package, by the stages data flows through (lower layers never import upper ones):

- :mod:`ichlib.io`: scans (NIfTI, DICOM), label tables (CT-ICH, RSNA), checks, safe writes;
- :mod:`ichlib.preprocess`: windows, resizing, slice sampling, augmentation, splits, cache,
  the dataset;
- :mod:`ichlib.model`, :mod:`ichlib.losses`, :mod:`ichlib.checkpoint`, :mod:`ichlib.predict`;
- :mod:`ichlib.training`: the loop, the run, metrics, the intensity baseline, two stages,
  ``torchrun``;
- :mod:`ichlib.explain`: Grad-CAM and how well it localises;
- :mod:`ichlib.viz`: figures;
- :mod:`ichlib.synthetic`: the phantom; :mod:`ichlib.course`: the notebooks' setup;
  :mod:`ichlib.explore`: the data notebooks' analysis.

``ichlib.evaluate`` is training's :func:`~ichlib.training.engine.evaluate`; a checkpoint or a
submission scored on a labelled folder (``ichlib evaluate`` on the command line) is
:mod:`ichlib.scoring`.

Start-up time: the errors, the labels and the version are imported here; every other name is
imported on first use (``__getattr__`` below, from the table ``_ON_FIRST_USE``), so
``import ichlib`` and ``ichlib --help`` load neither PyTorch nor pandas. The imports under
``TYPE_CHECKING`` are the same names for type checkers and IDEs; ``tests/test_packaging.py``
checks that they and the table agree.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from ichlib.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DataWarning,
    IchlibError,
    RunInterrupted,
    WriteError,
)
from ichlib.labels import LABELS, SUBTYPES
from ichlib.version import __version__

if TYPE_CHECKING:
    from ichlib import (
        checkpoint,
        course,
        device,
        explain,
        explore,
        io,
        losses,
        model,
        predict,
        preprocess,
        rsna_submission,
        synthetic,
        training,
        viz,
    )
    from ichlib.checkpoint import load_checkpoint, model_from_checkpoint
    from ichlib.course import COURSE_PATIENTS
    from ichlib.explain import (
        CANDIDATES,
        collect_localization,
        compare_cams,
        deletion_test,
        explain_scan,
        localization_table,
        localization_verdict,
        write_cam_report,
    )
    from ichlib.explore import (
        contrast_per_window,
        example_scan,
        fracture_table,
        hu_samples,
        lesion_slice,
        slice_at_height,
        window_table,
    )
    from ichlib.io import (
        DuplicateLabelWarning,
        check_dataset,
        cooccurrence,
        detect_format,
        label_counts,
        load_dicom_series,
        load_mask,
        load_volume,
        read_ct_ich,
        read_rsna,
    )
    from ichlib.model import CNNBiLSTM
    from ichlib.predict import Predictor
    from ichlib.preprocess import (
        WINDOWS,
        PreprocessConfig,
        ScanDataset,
        multi_window,
        patient_split,
        prepare_scan,
        rsna_group_split,
        sampled_mask,
        uniform_indices,
        window,
    )
    from ichlib.rsna_submission import predict_rsna, write_submission
    from ichlib.scoring import evaluate_checkpoint, format_evaluation, image_prior, score_submission
    from ichlib.training import (
        RunLog,
        TrainConfig,
        audit_checkpoint,
        beats_baseline,
        build_criterion,
        build_model,
        compare_runs,
        comparison_table,
        evaluate,
        make_eval_loader,
        make_loader,
        make_optimizer,
        meets_bar,
        patient_outcomes,
        prepare_data,
        read_metrics,
        results_table,
        run_intensity_baseline,
        run_position_baseline,
        train_one_epoch,
        verdict_table,
    )
    from ichlib.training.fit import fit
    from ichlib.viz import (
        SliceViewer,
        abbreviation_key,
        confusion_counts,
        montage,
        plot_cam_gallery,
        plot_cam_montage,
        plot_cam_slice,
        plot_composite,
        plot_confusion_matrices,
        plot_contrast,
        plot_cooccurrence,
        plot_hu_per_tissue,
        plot_label_aucs,
        plot_label_prevalence,
        plot_localization,
        plot_phantom_findings,
        plot_repeats,
        plot_roc_curves,
        plot_sampling,
        plot_scan_lengths,
        plot_shortcut_audit,
        plot_slice_importance,
        plot_subtype_examples,
        plot_windows,
        slice_title,
    )

#: The names imported on first use, by the module that defines or re-exports them.
_ON_FIRST_USE: dict[str, tuple[str, ...]] = {
    "ichlib.checkpoint": ("load_checkpoint", "model_from_checkpoint"),
    "ichlib.course": ("COURSE_PATIENTS",),
    "ichlib.explain": ("CANDIDATES", "collect_localization", "compare_cams", "deletion_test",
                       "explain_scan", "localization_table", "localization_verdict",
                       "write_cam_report"),
    "ichlib.explore": ("contrast_per_window", "example_scan", "fracture_table", "hu_samples",
                       "lesion_slice", "slice_at_height", "window_table"),
    "ichlib.io": ("DuplicateLabelWarning", "check_dataset", "cooccurrence", "detect_format",
                  "label_counts", "load_dicom_series", "load_mask", "load_volume", "read_ct_ich",
                  "read_rsna"),
    "ichlib.model": ("CNNBiLSTM",),
    "ichlib.predict": ("Predictor",),
    "ichlib.preprocess": ("WINDOWS", "PreprocessConfig", "ScanDataset", "multi_window",
                          "patient_split", "prepare_scan", "rsna_group_split", "sampled_mask",
                          "uniform_indices", "window"),
    "ichlib.rsna_submission": ("predict_rsna", "write_submission"),
    "ichlib.scoring": ("evaluate_checkpoint", "format_evaluation", "image_prior", "score_submission"),
    "ichlib.training": ("RunLog", "TrainConfig", "audit_checkpoint", "beats_baseline",
                        "build_criterion", "build_model", "compare_runs", "comparison_table",
                        "evaluate", "make_eval_loader", "make_loader", "make_optimizer", "meets_bar",
                        "patient_outcomes", "prepare_data", "read_metrics", "results_table",
                        "run_intensity_baseline", "run_position_baseline", "train_one_epoch",
                        "verdict_table"),
    "ichlib.training.fit": ("fit",),
    "ichlib.viz": ("SliceViewer", "abbreviation_key", "confusion_counts", "montage", "plot_cam_gallery", "plot_cam_montage", "plot_cam_slice",
                   "plot_composite", "plot_confusion_matrices", "plot_contrast",
                   "plot_cooccurrence", "plot_hu_per_tissue", "plot_label_aucs",
                   "plot_label_prevalence", "plot_localization", "plot_phantom_findings",
                   "plot_repeats", "plot_roc_curves", "plot_sampling", "plot_scan_lengths",
                   "plot_shortcut_audit", "plot_slice_importance", "plot_subtype_examples",
                   "plot_windows", "slice_title"),
}
_MODULE_OF = {name: module for module, names in _ON_FIRST_USE.items() for name in names}

#: Subpackages and modules reachable as attributes after ``import ichlib`` (``ichlib.course.setup``).
_SUBMODULES = ("checkpoint", "course", "device", "explain", "explore", "io", "losses", "model",
               "predict", "preprocess", "rsna_submission", "synthetic", "training", "viz")


if not TYPE_CHECKING:  # type checkers see the imports above, and no catch-all __getattr__
    def __getattr__(name: str) -> object:
        """Import a public name or a subpackage on first use, and keep it in the module."""
        if name in _SUBMODULES:
            return import_module(f"ichlib.{name}")
        if name not in _MODULE_OF:
            raise AttributeError(f"module 'ichlib' has no attribute {name!r}")
        value = getattr(import_module(_MODULE_OF[name]), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF, *_SUBMODULES})


__all__ = [
    "__version__",
    "CheckpointError", "ConfigError", "DataError", "DataWarning", "IchlibError", "RunInterrupted",
    "WriteError", "LABELS", "SUBTYPES",
    *_MODULE_OF,
]
