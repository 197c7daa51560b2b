"""The shortcut audit: the one-feature position rules and the blood-band AUCs."""

from __future__ import annotations

import numpy as np

from ichlib.labels import LABELS
from ichlib.training.metrics import paired_auc_difference, roc_auc
from ichlib.training.shortcuts import (
    BinnedRule,
    SliceRows,
    band_audit,
    relative_heights,
)


def test_relative_heights_are_slice_centres():
    assert np.allclose(relative_heights(4), [0.125, 0.375, 0.625, 0.875])


def test_the_binned_rule_learns_a_peak_in_the_middle_that_a_slope_cannot():
    rng = np.random.default_rng(0)
    height = rng.random(4000)
    y = np.zeros((4000, len(LABELS)))
    y[:, 0] = (np.abs(height - 0.5) < 0.15) & (rng.random(4000) < 0.8)
    rule = BinnedRule(n_bins=10).fit(height, y)
    p = rule.predict_proba(height)
    assert p.shape == (4000, len(LABELS))
    assert roc_auc(y[:, 0], p[:, 0]) > 0.85          # height alone separates them
    assert abs(roc_auc(y[:, 0], height) - 0.5) < 0.05  # a monotone score of height does not
    assert 0 < p.min() and p.max() < 1              # no bin says never or always
    # a label that never occurs gets a small constant, not 0
    assert np.allclose(p[:, 3], p[0, 3]) and 0 < p[0, 3] < 0.01


def test_band_audit_scores_only_the_slices_inside_the_band():
    # blood only at mid heights; a "height" score is perfect over all slices, useless inside
    heights = np.tile(relative_heights(10), 20)
    pids = [f"p{i}" for i in range(20) for _ in range(10)]
    y = np.zeros((200, len(LABELS)))
    inside = (heights > 0.3) & (heights < 0.7)
    rng = np.random.default_rng(1)
    y[inside, 0] = rng.random(inside.sum()) < 0.5
    y[:, 1] = y[:, 0]
    by_height = np.repeat(inside.astype(float)[:, None], len(LABELS), axis=1)
    by_blood = y + 0.1 * rng.random(y.shape)
    rows = SliceRows(pids, heights, y, {"height": by_height, "blood": by_blood})
    table = {(r["model"], r["where"]): r for r in band_audit(rows, (0.3, 0.7), n_boot=50)}
    assert table[("height", "all heights")]["auc_any"] > 0.75
    assert table[("height", "blood band")]["auc_any"] == 0.5
    assert table[("blood", "blood band")]["auc_any"] == 1.0
    assert table[("blood", "blood band")]["n_slices"] == int(inside.sum())
    low, high = table[("height", "all heights")]["auc_any_ci"]
    assert low <= table[("height", "all heights")]["auc_any"] <= high


def test_paired_difference_is_clear_when_one_model_is_better_on_every_resample():
    rng = np.random.default_rng(2)
    y = np.zeros((80, len(LABELS)))
    y[:40, :] = 1
    good = y + 0.3 * rng.random(y.shape)          # separates perfectly
    noise = rng.random(y.shape)                   # chance
    out = paired_auc_difference(y, good, noise, n_boot=200)
    assert out["any"]["difference"] > 0.3 and out["any"]["ci"][0] > 0
    assert out["mean_subtype"]["ci"][0] > 0
    same = paired_auc_difference(y, good, good, n_boot=50)
    assert same["any"]["difference"] == 0 and same["any"]["ci"] == [0.0, 0.0]
    swapped = paired_auc_difference(y, noise, good, n_boot=200)
    assert swapped["any"]["ci"][1] < 0
