"""The comparison table of runs and the baseline, from metrics.json-shaped dicts."""

from __future__ import annotations

import pandas as pd
import pytest

from ichlib.errors import DataError
from ichlib.labels import LABELS
from ichlib.training.report import (
    BASELINE,
    beats_baseline,
    comparison_table,
    patient_outcomes,
    read_metrics,
)


def report(auc_any, mean_sub, ci=(0.5, 0.9), loss=0.3, n=60):
    ci = list(ci) if ci else None
    labels = {label: {"auc": auc_any if label == "any" else mean_sub, "auc_ci": ci} for label in LABELS}
    return {"labels": labels, "mean_subtype_auc": mean_sub, "mean_subtype_auc_ci": ci,
            "patient_weighted_log_loss": loss, "n": n}


def metrics(auc_any, mean_sub, base_sub=0.7, test=("a", "b"), seconds=12.4):
    return {"split": {"test": list(test)}, "n_patients": {"test": len(test)},
            "training": {"total_seconds": seconds},
            "test": {"patient": report(auc_any, mean_sub), "image": {"image_weighted_log_loss": 0.21}},
            "baseline": {"test": {"patient": report(0.6, base_sub, ci=None), "image": None}}}


def test_one_row_per_run_and_the_baseline_on_the_same_patients():
    table = comparison_table({"two-stage": metrics(0.9, 0.8), "end to end": metrics(0.7, 0.65)})
    assert list(table.index) == ["two-stage", "end to end", BASELINE]
    assert table.loc["two-stage", "mean subtype AUC"] == 0.8
    assert table.loc["two-stage", "subtype 95% CI"] == "0.50-0.90"
    assert table.loc[BASELINE, "subtype 95% CI"] == "n/a" and table.loc[BASELINE, "train seconds"] is None
    assert table.loc["end to end", "image weighted log loss"] == 0.21
    assert table.loc["two-stage", "train seconds"] == 12
    with pytest.raises(ValueError, match="different patients"):
        comparison_table({"a": metrics(0.9, 0.8), "b": metrics(0.9, 0.8, test=("c",))})


def test_the_verdict_says_which_way_it_goes():
    assert "beats" in beats_baseline(metrics(0.9, 0.8, base_sub=0.7))
    assert "does NOT beat" in beats_baseline(metrics(0.9, 0.6, base_sub=0.7))
    none = metrics(0.9, 0.6)
    none["test"]["patient"]["mean_subtype_auc"] = None
    assert "n/a" in beats_baseline(none)


def test_outcomes_at_the_validation_threshold_by_hand():
    labels = list(LABELS)
    probs = {"a": [0.9, 0.1, 0.8, 0.0, 0.0, 0.0], "b": [0.6, 0.0, 0.0, 0.0, 0.0, 0.7],
             "c": [0.2, 0.3, 0.0, 0.0, 0.0, 0.0], "d": [0.1, 0.0, 0.0, 0.0, 0.0, 0.0]}
    metrics = {"test": {"probabilities": {pid: dict(zip(labels, p)) for pid, p in probs.items()}},
               "thresholds": {lab: 0.5 for lab in labels}}
    truth = pd.DataFrame({lab: [0, 0, 0, 0] for lab in labels}, index=["d", "c", "b", "a"])
    truth.loc[["a", "c"], "any"] = 1
    table = patient_outcomes(metrics, truth)
    assert table.loc[["a", "b", "c", "d"], "outcome"].tolist() == ["TP", "FP", "FN", "TN"]
    assert table.loc["a", "top_subtype"] == "intraventricular" and table.loc["b", "top_subtype"] == "subdural"
    metrics["thresholds"]["any"] = 0.1  # a lower threshold turns c into a hit and d into a false alarm
    assert patient_outcomes(metrics, truth).loc[["c", "d"], "outcome"].tolist() == ["TP", "FP"]


def test_read_metrics_names_the_file_when_the_run_did_not_finish(tmp_path):
    with pytest.raises(DataError, match=r"metrics.json: no metrics: the run did not finish"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text('{"test": ')
    with pytest.raises(DataError, match="unreadable metrics"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text('{"n_patients": {"test": 60}}')
    assert read_metrics(tmp_path)["n_patients"]["test"] == 60
