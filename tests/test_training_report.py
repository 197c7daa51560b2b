"""The comparison table of runs and the baseline, from metrics.json-shaped dicts."""

from __future__ import annotations

import pytest

from ichlib.labels import LABELS
from ichlib.training.report import BASELINE, beats_baseline, comparison_table


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
