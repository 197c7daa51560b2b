"""Metrics against scikit-learn and hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from ichlib.labels import LABELS, SUBTYPES
from ichlib.training.metrics import (
    PROB_CLIP,
    bootstrap_auc,
    choose_thresholds,
    flatten_slices,
    one_class_reason,
    results_table,
    roc_auc,
    score_predictions,
    sensitivity_specificity,
    weighted_log_loss,
    youden_threshold,
)


def random_data(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 6)) < 0.35).astype(float)
    p = np.clip(0.3 * y + 0.7 * rng.random((n, 6)), 0, 1)
    p[:, 2] = np.round(p[:, 2], 1)  # ties
    return y, p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn(seed):
    y, p = random_data(seed=seed)
    for j in range(6):
        assert roc_auc(y[:, j], p[:, j]) == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-12)


def test_bootstrap_replicates_match_resampling_by_hand():
    y, p = random_data(n=30)
    boot = bootstrap_auc(y, p, n_boot=40, seed=7, chunk=40)
    # The same draws, done the slow way: resample the rows and ask sklearn.
    draws = np.random.default_rng(7).integers(0, 30, size=(40, 30))
    for b in range(40):
        for j in range(6):
            yb, pb = y[draws[b], j], p[draws[b], j]
            expected = roc_auc_score(yb, pb) if 0 < yb.sum() < len(yb) else np.nan
            np.testing.assert_allclose(boot[b, j], expected, atol=1e-12)


def test_slice_bootstrap_resamples_whole_patients():
    rng = np.random.default_rng(0)
    groups = np.repeat(["a", "b", "c", "d"], 5)
    y = (rng.random((20, 1)) < 0.5).astype(float)
    p = rng.random((20, 1))
    boot = bootstrap_auc(y, p, groups=groups, n_boot=30, seed=3, chunk=30)
    draws = np.random.default_rng(3).integers(0, 4, size=(30, 4))
    names = np.array(["a", "b", "c", "d"])
    for b in range(30):
        rows = np.concatenate([np.flatnonzero(groups == names[g]) for g in draws[b]])
        yb, pb = y[rows, 0], p[rows, 0]
        expected = roc_auc_score(yb, pb) if 0 < yb.sum() < len(yb) else np.nan
        np.testing.assert_allclose(boot[b, 0], expected, atol=1e-12)


def test_report_auc_ci_and_means():
    y, p = random_data(n=80)
    report = score_predictions(y, p, n_boot=300, seed=0)
    assert set(report["labels"]) == set(LABELS)
    for j, label in enumerate(LABELS):
        entry = report["labels"][label]
        assert entry["auc"] == pytest.approx(roc_auc_score(y[:, j], p[:, j]))
        low, high = entry["auc_ci"]
        assert low <= entry["auc"] <= high and high - low < 0.5
    assert report["mean_subtype_auc"] == pytest.approx(
        np.mean([roc_auc_score(y[:, j], p[:, j]) for j in range(1, 6)]))
    low, high = report["mean_subtype_auc_ci"]
    assert low <= report["mean_subtype_auc"] <= high
    # Seeded: the same report again.
    assert score_predictions(y, p, n_boot=300, seed=0) == report
    json.dumps(report, allow_nan=False)


def test_one_class_label_is_reported_not_crashed():
    y, p = random_data(n=20)
    y[:, 4] = 0  # no epidural in this split
    y[:, 5] = 1  # only subdural
    report = score_predictions(y, p, thresholds=dict.fromkeys(LABELS, 0.5), n_boot=50)
    epi, sdh = report["labels"]["epidural"], report["labels"]["subdural"]
    assert epi["auc"] is None and epi["auc_ci"] is None
    assert epi["note"] == "only negatives in this split"
    assert sdh["note"] == "only positives in this split"
    assert epi["sensitivity"] is None and epi["specificity"] is not None
    assert report["mean_subtype_auc_labels"] == ["intraparenchymal", "intraventricular", "subarachnoid"]
    assert report["mean_subtype_auc"] == pytest.approx(
        np.mean([roc_auc_score(y[:, j], p[:, j]) for j in (1, 2, 3)]))
    assert one_class_reason(np.array([])) == "no samples in this split"
    assert math.isnan(roc_auc(np.zeros(5), np.arange(5.0)))
    json.dumps(report, allow_nan=False)


def test_weighted_log_loss_against_sklearn():
    y, p = random_data(n=50)
    per_label = [log_loss(y[:, j], p[:, j], labels=[0, 1]) for j in range(6)]
    expected = (2 * per_label[0] + sum(per_label[1:])) / 7
    assert weighted_log_loss(y, p) == pytest.approx(expected, rel=1e-9)


def test_log_loss_clips_probabilities():
    y = np.ones((1, 6))
    p = np.zeros((1, 6))  # certain and wrong everywhere
    assert weighted_log_loss(y, p) == pytest.approx(-math.log(PROB_CLIP))


def test_youden_threshold_is_the_best_j():
    y, p = random_data(n=40, seed=3)
    for j in range(6):
        t = youden_threshold(y[:, j], p[:, j])
        best = max((sum(sensitivity_specificity(y[:, j], p[:, j], c)) - 1) for c in np.unique(p[:, j]))
        sens, spec = sensitivity_specificity(y[:, j], p[:, j], t)
        assert sens + spec - 1 == pytest.approx(best)
    assert youden_threshold(np.zeros(4), np.arange(4.0)) is None


def test_thresholds_fall_back_on_one_class_validation():
    y, p = random_data(n=20)
    y[:, 3] = 0
    thresholds, notes = choose_thresholds(y, p)
    assert thresholds["subarachnoid"] == 0.5
    assert "only negatives" in notes["subarachnoid"] and set(notes) == {"subarachnoid"}


def test_sensitivity_specificity_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.5])
    sens, spec = sensitivity_specificity(y, p, 0.5)
    assert sens == pytest.approx(2 / 3)   # 0.9, 0.6 called; 0.2 missed
    assert spec == pytest.approx(2 / 4)   # 0.1, 0.3 correct; 0.7 and 0.5 (>= t) wrong


def test_flatten_slices_counts_each_slice_once():
    labels = np.zeros((2, 4, 6))
    labels[0, 1, 0] = 1
    probs = np.full((2, 4, 6), 0.2)
    indices = np.array([[0, 1, 1, 2], [0, 1, 2, 3]])  # scan 0 was shorter than S
    y, p, groups = flatten_slices(labels, probs, ["049", "050"], indices)
    assert y.shape == (7, 6) and p.shape == (7, 6)
    assert groups == ["049"] * 3 + ["050"] * 4
    assert y[:, 0].sum() == 1
    report = score_predictions(y, p, groups=groups, level="slice", n_boot=20)
    assert report["level"] == "slice" and report["n"] == 7 and report["n_patients"] == 2


def test_results_table_uses_label_names():
    y, p = random_data(n=30)
    model = score_predictions(y, p, dict.fromkeys(LABELS, 0.5), n_boot=20)
    other = score_predictions(y, 1 - p, dict.fromkeys(LABELS, 0.5), n_boot=20)
    table = results_table({"cnn": model, "baseline": other})
    assert list(table.columns) == ["model", "level", "label", "n_pos", "n_neg", "auc", "auc_ci_low",
                                   "auc_ci_high", "log_loss", "threshold", "sensitivity",
                                   "specificity", "note"]
    assert list(table["label"][:6]) == list(LABELS)
    row = table[(table.model == "cnn") & (table.label == "subdural")].iloc[0]
    assert row.auc == pytest.approx(roc_auc_score(y[:, 5], p[:, 5]))
    assert set(SUBTYPES) < set(table.label)
    assert len(results_table(model)) == 6
