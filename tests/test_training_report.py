"""The comparison table of runs and the baseline, from metrics.json-shaped dicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ichlib.errors import DataError
from ichlib.labels import LABELS
from ichlib.training.report import (
    BASELINE,
    POSITION,
    beats_baseline,
    compare_runs,
    comparison_table,
    meets_bar,
    patient_outcomes,
    read_metrics,
    verdict_table,
)


def report(auc_any, mean_sub, ci=(0.5, 0.9), loss=0.3, n=60):
    ci = list(ci) if ci else None
    labels = {label: {"auc": auc_any if label == "any" else mean_sub, "auc_ci": ci} for label in LABELS}
    return {"labels": labels, "mean_subtype_auc": mean_sub, "mean_subtype_auc_ci": ci,
            "patient_weighted_log_loss": loss, "n": n}


def metrics(auc_any, mean_sub, base_sub=0.7, test=("a", "b"), seconds=12.4, diff_ci=None, pos_sub=0.55):
    """metrics.json in miniature; the paired interval of each difference is ``diff_ci`` around
    the point difference (default ±0.05)."""
    def comparison(rule_sub):
        d = mean_sub - rule_sub
        ci = list(diff_ci) if diff_ci else [d - 0.05, d + 0.05]
        return {"mean_subtype": {"difference": d, "ci": ci}, "any": {"difference": 0.1, "ci": [0.02, 0.2]}}
    return {"split": {"test": list(test)}, "n_patients": {"test": len(test)},
            "training": {"total_seconds": seconds},
            "test": {"patient": report(auc_any, mean_sub), "image": {"image_weighted_log_loss": 0.21}},
            "baseline": {"test": {"patient": report(0.6, base_sub, ci=None), "image": None}},
            "position_baseline": {"test": {"patient": report(0.5, pos_sub, ci=None)}},
            "comparisons": {BASELINE: comparison(base_sub), POSITION: comparison(pos_sub)}}


def test_one_row_per_run_and_the_baseline_on_the_same_patients():
    table = comparison_table({"two-stage": metrics(0.9, 0.8), "end to end": metrics(0.7, 0.65)})
    assert list(table.index) == ["two-stage", "end to end", BASELINE, POSITION]
    assert table.loc["two-stage", "Δ subtype vs intensity"] == "+0.100 (+0.05 to +0.15)"
    assert table.loc["end to end", "Δ subtype vs position"] == "+0.100 (+0.05 to +0.15)"
    assert table.loc[POSITION, "mean subtype AUC"] == 0.55
    assert table.loc["two-stage", "mean subtype AUC"] == 0.8
    assert table.loc["two-stage", "subtype 95% CI"] == "0.50-0.90"
    assert table.loc[BASELINE, "subtype 95% CI"] == "n/a" and table.loc[BASELINE, "train seconds"] == "-"
    assert table.loc["end to end", "image weighted log loss"] == 0.21
    assert table.loc["two-stage", "train seconds"] == 12
    with pytest.raises(ValueError, match="different patients"):
        comparison_table({"a": metrics(0.9, 0.8), "b": metrics(0.9, 0.8, test=("c",))})


def test_the_verdict_reads_the_paired_interval_not_the_point_estimates():
    assert "the model beats the intensity rule: difference +0.100" in beats_baseline(metrics(0.9, 0.8, base_sub=0.7))
    # a higher point estimate whose paired interval includes 0 is no win
    unclear = beats_baseline(metrics(0.9, 0.8, base_sub=0.7, diff_ci=(-0.02, 0.2)))
    assert "does NOT clearly beat" in unclear and "-0.020 to +0.200" in unclear
    assert "the rule is better" in beats_baseline(metrics(0.9, 0.6, base_sub=0.7))
    assert "beats the position rule" in beats_baseline(metrics(0.9, 0.8), rule=POSITION)
    none = metrics(0.9, 0.6)
    none["comparisons"][BASELINE]["mean_subtype"]["difference"] = None
    assert "no verdict" in beats_baseline(none)


def test_the_bar_needs_both_rules_beaten_and_auc_any():
    met, line = meets_bar(metrics(0.95, 0.8))
    assert met and line.startswith("MET")
    met, line = meets_bar(metrics(0.85, 0.8))
    assert not met and "AUC any 0.850 (bar 0.90)" in line
    met, line = meets_bar(metrics(0.95, 0.8, pos_sub=0.78))  # +0.02 ± 0.05 against the position rule
    assert not met and "does not clearly beat the position rule" in line and "beats the intensity rule" in line


def test_the_verdict_table_has_one_short_row_per_run():
    runs = {"good": metrics(0.95, 0.8), "short of any": metrics(0.85, 0.8),
            "unclear": metrics(0.95, 0.8, base_sub=0.7, diff_ci=(-0.02, 0.2)), "worse": metrics(0.95, 0.6)}
    table = verdict_table(runs)
    assert list(table.index) == list(runs)
    assert table.loc["good"].tolist() == [0.95, "yes", "beats", "beats", "MET"]
    assert table.loc["short of any", "AUC any ≥ 0.90"] == "no" and table.loc["short of any", "bar"] == "NOT MET"
    assert table.loc["unclear", "vs intensity rule"] == "no clear difference"
    assert table.loc["worse", "vs intensity rule"] == "rule is better" and table.loc["worse", "bar"] == "NOT MET"


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


def test_compare_runs_is_paired_on_the_same_patients():
    rng = np.random.default_rng(0)
    ids = [f"p{i}" for i in range(60)]
    y = (rng.random((60, len(LABELS))) < 0.4).astype(int)
    good = y + 0.5 * rng.random(y.shape)
    noise = rng.random(y.shape)

    def run(p):
        return {"test": {"labels": {pid: dict(zip(LABELS, map(int, row))) for pid, row in zip(ids, y)},
                         "probabilities": {pid: dict(zip(LABELS, map(float, row))) for pid, row in zip(ids, p)}}}

    line = compare_runs(run(good), run(noise), ("good", "noise"), n_boot=200)
    assert line.count("good is better") == 2
    assert "no clear difference" in compare_runs(run(noise), run(noise + 1e-9 * rng.random(y.shape)), n_boot=200)
    other = run(good)
    other["test"]["probabilities"].pop("p0")
    with pytest.raises(ValueError, match="different patients"):
        compare_runs(run(good), other)
