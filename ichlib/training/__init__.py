"""Training and evaluating the CNN + BiLSTM: the loop's parts, the run, metrics, baselines,
two-stage training and distributed training under ``torchrun``.

:func:`~ichlib.training.fit.fit` is ``ichlib.fit``; it is not re-exported here, so that
``ichlib.training.fit`` stays its module (tests and ``torchrun`` workers patch names in it).
"""

from ichlib.training.baseline import run_intensity_baseline
from ichlib.training.config import TrainConfig
from ichlib.training.cv import CVResult, cross_validate
from ichlib.training.data import PreparedData, prepare_data
from ichlib.training.engine import (
    EarlyStopping,
    EpochStats,
    EvalResult,
    evaluate,
    make_optimizer,
    train_one_epoch,
)
from ichlib.training.evaluation import audit_checkpoint
from ichlib.training.fit import FitResult
from ichlib.training.loaders import make_eval_loader, make_loader
from ichlib.training.log import RunLog
from ichlib.training.metrics import paired_auc_difference, results_table, score_predictions
from ichlib.training.report import (
    beats_baseline,
    compare_runs,
    comparison_table,
    meets_bar,
    patient_outcomes,
    read_metrics,
    verdict_table,
)
from ichlib.training.results import LabelScore, RunMetrics, Scores
from ichlib.training.runfolder import RunFolderWarning
from ichlib.training.shortcuts import run_position_baseline
from ichlib.training.strategies import EndToEnd, TwoStage, build_criterion, build_model

__all__ = [
    "CVResult", "EarlyStopping", "EndToEnd", "EpochStats", "EvalResult", "FitResult", "LabelScore", "PreparedData",
    "RunFolderWarning", "RunLog", "RunMetrics", "Scores", "TrainConfig", "TwoStage", "audit_checkpoint", "beats_baseline",
    "build_criterion", "build_model", "compare_runs", "comparison_table", "cross_validate",
    "evaluate", "make_eval_loader", "make_loader", "make_optimizer", "meets_bar",
    "paired_auc_difference", "patient_outcomes", "prepare_data", "read_metrics", "results_table",
    "run_intensity_baseline", "run_position_baseline", "score_predictions", "train_one_epoch",
    "verdict_table",
]
