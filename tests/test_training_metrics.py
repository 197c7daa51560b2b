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
    bootstrap_mean,
    choose_thresholds,
    flatten_slices,
    image_level_report,
    image_weighted_log_loss,
    log_loss_report,
    one_class_reason,
    pooled_image_report,
    prevalence,
    results_table,
    roc_auc,
    score_predictions,
    sensitivity_specificity,
    too_few_reason,
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
    assert epi["auc_ci_undefined"] == 50 and sdh["auc_ci_undefined"] == 50
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
    assert PROB_CLIP == 1e-15  # RSNA's clip
    assert weighted_log_loss(y, p) == pytest.approx(-math.log(1e-15))


def test_image_weighted_log_loss_by_hand():
    # Three images. Columns: any, IPH, IVH, SAH, EDH, SDH.
    y = np.array([[1, 0, 0, 1, 0, 0],
                  [0, 0, 0, 0, 0, 0],
                  [1, 1, 0, 0, 0, 1]], dtype=float)
    p = np.array([[0.8, 0.1, 0.1, 0.6, 0.1, 0.1],
                  [0.2, 0.1, 0.1, 0.1, 0.1, 0.1],
                  [0.0, 0.5, 0.1, 0.1, 0.1, 1.0]])  # 0 and 1 are clipped to 1e-15
    ln = math.log
    image1 = (2 * -ln(0.8) + 3 * -ln(0.9) + -ln(0.6) + -ln(0.9)) / 7
    image2 = (2 * -ln(0.8) + 5 * -ln(0.9)) / 7
    image3 = (2 * -ln(1e-15) + -ln(0.5) + 3 * -ln(0.9) + -ln(1.0 - 1e-15)) / 7
    expected = (image1 + image2 + image3) / 3
    assert image_weighted_log_loss(y, p) == pytest.approx(expected, rel=1e-12)
    # 0.19694, 0.13901 and 10.01240 per image: the confident miss on image 3 dominates
    assert expected == pytest.approx(3.44945, abs=1e-5)
    # The mean over images equals the weighted mean of the per-label log losses (sklearn).
    per_label = [log_loss(y[:, j], np.clip(p[:, j], 1e-15, 1 - 1e-15), labels=[0, 1]) for j in range(6)]
    assert expected == pytest.approx((2 * per_label[0] + sum(per_label[1:])) / 7, rel=1e-9)


def test_log_loss_bootstrap_resamples_patients():
    rng = np.random.default_rng(1)
    y = (rng.random((12, 6)) < 0.3).astype(float)
    p = rng.random((12, 6))
    groups = np.repeat(["a", "b", "c"], [2, 4, 6])
    report = log_loss_report(y, p, groups, n_boot=25, seed=4, ci=0.9)
    assert report["value"] == pytest.approx(image_weighted_log_loss(y, p))
    assert report["n_rows"] == 12 and report["n_patients"] == 3
    losses = np.array([image_weighted_log_loss(y[i:i + 1], p[i:i + 1]) for i in range(12)])
    draws = np.random.default_rng(4).integers(0, 3, size=(25, 3))  # the draws bootstrap_auc makes
    names = np.array(["a", "b", "c"])
    by_hand = [losses[np.concatenate([np.flatnonzero(groups == names[g]) for g in d])].mean() for d in draws]
    np.testing.assert_allclose(bootstrap_mean(losses, groups, n_boot=25, seed=4), by_hand, rtol=1e-12)
    low, high = report["ci"]
    assert (low, high) == pytest.approx(tuple(np.quantile(by_hand, [0.05, 0.95])))


def test_one_positive_gets_no_auc_and_no_degenerate_interval():
    rng = np.random.default_rng(0)
    y = np.zeros((40, 6))
    y[:, 0] = rng.random(40) < 0.5
    y[7, 3] = 1  # a single subarachnoid case, scored highest: AUC 1.0 on its own
    p = rng.random((40, 6))
    p[7, 3] = 0.99
    report = score_predictions(y, p, n_boot=500, seed=0)
    sah = report["labels"]["subarachnoid"]
    assert sah["auc"] is None and sah["auc_ci"] is None
    assert sah["note"].startswith("n/a: 1 positive in this split")
    # About a third of the resamples miss the one positive: (39/40)^40 = 36%; they are counted.
    assert 0.25 * 500 < sah["auc_ci_undefined"] < 0.45 * 500
    assert "subarachnoid" not in report["mean_subtype_auc_labels"]
    any_ = report["labels"]["any"]
    assert any_["auc"] is not None and any_["auc_ci"][0] < any_["auc_ci"][1]
    assert any_["auc_ci_undefined"] == 0
    assert too_few_reason(np.array([1, 1, 0, 1])) == (
        "n/a: 1 negative in this split; an AUC and its bootstrap interval need at least 2 "
        "positives and 2 negatives")
    assert too_few_reason(np.array([1, 1, 0, 0])) is None
    json.dumps(report, allow_nan=False)


def test_two_positives_get_an_interval_and_the_undefined_count():
    y = np.zeros((30, 6))
    y[:15, 0] = 1
    y[[2, 9], 1] = 1
    p = np.linspace(0, 1, 30)[:, None].repeat(6, axis=1)
    report = score_predictions(y, p, n_boot=400, seed=2)
    iph = report["labels"]["intraparenchymal"]
    boot = bootstrap_auc(y, p, n_boot=400, seed=2)[:, 1]
    assert iph["auc_ci_undefined"] == int(np.isnan(boot).sum()) > 0
    assert iph["auc_ci"] == pytest.approx(list(np.quantile(boot[~np.isnan(boot)], [0.025, 0.975])))
    assert report["mean_subtype_auc_labels"] == ["intraparenchymal"]
    assert report["mean_subtype_auc_ci_undefined"] == iph["auc_ci_undefined"]


def test_report_names_the_log_loss_level():
    y, p = random_data(n=30)
    patient = score_predictions(y, p, n_boot=30)
    assert patient["patient_weighted_log_loss"] == pytest.approx(weighted_log_loss(y, p))
    low, high = patient["patient_weighted_log_loss_ci"]
    assert low <= patient["patient_weighted_log_loss"] <= high
    assert "weighted_log_loss" not in patient
    sliced = score_predictions(y, p, groups=np.repeat(np.arange(10), 3), level="slice", n_boot=0)
    assert sliced["slice_weighted_log_loss"] == pytest.approx(weighted_log_loss(y, p))
    assert sliced["slice_weighted_log_loss_ci"] is None


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


def test_image_level_report_needs_every_image_and_pools_exactly():
    rng = np.random.default_rng(5)
    n_images = {"a": 3, "b": 5, "c": 2}
    groups = np.repeat(list(n_images), list(n_images.values()))
    y = (rng.random((10, 6)) < 0.3).astype(float)
    p = rng.random((10, 6))
    prior = np.array([0.3, 0.1, 0.1, 0.1, 0.1, 0.1])
    report = image_level_report(y, p, groups, n_images, prior=prior, n_boot=40, seed=1)
    assert report["image_weighted_log_loss"] == pytest.approx(image_weighted_log_loss(y, p))
    assert report["prevalence_prior"] == pytest.approx(image_weighted_log_loss(y, np.tile(prior, (10, 1))))
    assert report["n_images"] == 10 and report["n_patients"] == 3 and report["note"] is None
    assert report["ci"] == pytest.approx(log_loss_report(y, p, groups, n_boot=40, seed=1)["ci"])
    # Two "folds" pooled from their per-patient sums = the loss over all their images.
    first = image_level_report(y[:8], p[:8], groups[:8], {"a": 3, "b": 5}, n_boot=0)
    second = image_level_report(y[8:], p[8:], groups[8:], {"c": 2}, n_boot=0)
    pooled = pooled_image_report({**first["by_patient"], **second["by_patient"]}, n_boot=40, seed=1)
    assert pooled["image_weighted_log_loss"] == pytest.approx(report["image_weighted_log_loss"], rel=1e-12)
    assert pooled["ci"] == pytest.approx(report["ci"], rel=1e-12)
    # Sampled slices only: no image-level number, and the note says why.
    partial = image_level_report(y[:9], p[:9], groups[:9], n_images, n_boot=10)
    assert partial["image_weighted_log_loss"] is None and partial["ci"] is None
    assert "cover 9 of the 10 images" in partial["note"]
    assert prevalence(np.array([[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]))[:2] == pytest.approx([0.5, 0.5 / 3])
