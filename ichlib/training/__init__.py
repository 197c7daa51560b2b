"""Training and evaluating the CNN + BiLSTM: the loop's parts, the run, metrics, baselines,
two-stage training and distributed training under ``torchrun``."""

from ichlib._lazy import lazy_exports

_NAMES = {
    "run_intensity_baseline": ".baseline",
    "TrainConfig": ".config",
    "CVResult": ".cv",
    "cross_validate": ".cv",
    "PreparedData": ".data",
    "prepare_data": ".data",
    "EarlyStopping": ".engine",
    "EvalResult": ".engine",
    "evaluate": ".engine",
    "optimizer_step": ".engine",
    "train_one_epoch": ".engine",
    "final_evaluation": ".evaluation",
    "audit_checkpoint": ".evaluation",
    "FitResult": ".fit",
    "fit": ".fit",
    "make_loader": ".loaders",
    "make_eval_loader": ".data",
    "make_optimizer": ".engine",
    "comparison_table": ".report",
    "patient_outcomes": ".report",
    "read_metrics": ".report",
    "beats_baseline": ".report",
    "meets_bar": ".report",
    "compare_runs": ".report",
    "run_position_baseline": ".shortcuts",
    "paired_auc_difference": ".metrics",
    "RunLog": ".log",
    "results_table": ".metrics",
    "RunFolderWarning": ".runfolder",
    "run_folder": ".runfolder",
    "score_predictions": ".metrics",
    "EndToEnd": ".strategies",
    "TwoStage": ".strategies",
    "build_criterion": ".strategies",
    "build_model": ".strategies",
}
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
__all__ = sorted(_NAMES)
