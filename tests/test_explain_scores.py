"""Localisation scores on the scan's grid, by hand: energy, pointing in mm, Dice, the table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ichlib.errors import ConfigError
from ichlib.explain.scores import (
    choose_dice_threshold,
    dice,
    energy_in_mask,
    grow_mask,
    pointing_game,
    score_table,
    slice_scores,
    to_grid,
)


def box(shape=(16, 16), r0=4, r1=8, c0=4, c1=8) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_energy_known_answers():
    mask = box()[None]
    cam = np.zeros((1, 16, 16))
    cam[0, 5, 5], cam[0, 12, 12] = 3.0, 1.0
    assert energy_in_mask(cam, mask)[0] == pytest.approx(0.75)
    assert energy_in_mask(np.ones((1, 16, 16)), mask)[0] == pytest.approx(16 / 256)
    assert energy_in_mask(np.zeros((1, 16, 16)), mask)[0] == 0.0
    assert np.isnan(energy_in_mask(cam, np.zeros((1, 16, 16), bool))[0])


def test_energy_inside_the_brain_leaves_the_mass_outside_it_out():
    mask = box()[None]
    brain = box(r0=2, r1=12, c0=2, c1=12)[None]            # the mask lies inside the brain
    cam = np.zeros((1, 16, 16))
    cam[0, 5, 5], cam[0, 10, 10], cam[0, 14, 14] = 2.0, 1.0, 1.0   # in the mask, in the brain, on the scalp
    rows = slice_scores(cam, mask, (1.0, 1.0), brain=brain)
    assert rows["energy"].iloc[0] == pytest.approx(0.5)
    assert rows["energy_in_brain"].iloc[0] == pytest.approx(2 / 3)
    # a uniform map scores the mask's share of the brain there
    uniform = slice_scores(np.ones((1, 16, 16)), mask, (1.0, 1.0), brain=brain)
    assert uniform["energy_in_brain"].iloc[0] == pytest.approx(16 / 100)
    assert "energy_in_brain" not in slice_scores(cam, mask, (1.0, 1.0))


def test_pointing_counts_the_share_of_tied_maxima_inside():
    mask = box()[None]
    unique = np.zeros((1, 16, 16))
    unique[0, 5, 5] = 1.0
    assert pointing_game(unique, mask)[0] == 1.0
    flat = np.ones((1, 16, 16))
    assert pointing_game(flat, mask)[0] == pytest.approx(16 / 256)   # a guess, not a lucky hit
    two = np.zeros((1, 16, 16))
    two[0, 5, 5] = two[0, 12, 12] = 1.0
    assert pointing_game(two, mask)[0] == 0.5
    assert pointing_game(np.zeros((1, 16, 16)), mask)[0] == 0.0       # points nowhere


def test_tolerance_is_in_millimetres_under_anisotropic_spacing():
    mask = np.zeros((1, 21, 21), bool)
    mask[0, 10, 10] = True
    cam = np.zeros((1, 21, 21))
    cam[0, 10, 13] = 1.0            # 3 columns away
    # columns 0.5 mm apart: 1.5 mm away, inside a 2 mm tolerance
    assert pointing_game(cam, mask, spacing=(2.0, 0.5), tolerance_mm=2.0)[0] == 1.0
    cam = np.zeros((1, 21, 21))
    cam[0, 13, 10] = 1.0            # 3 rows away: 6 mm with 2 mm rows
    assert pointing_game(cam, mask, spacing=(2.0, 0.5), tolerance_mm=5.0)[0] == 0.0
    assert pointing_game(cam, mask, spacing=(2.0, 0.5), tolerance_mm=6.0)[0] == 1.0
    grown = grow_mask(mask, (2.0, 0.5), 2.0)[0]
    assert grown[10, 6] and grown[10, 14] and not grown[10, 5]   # 2 mm = 4 columns
    assert grown[11, 10] and not grown[12, 10]                    # 2 mm = 1 row


def test_dice_by_hand():
    mask = box()[None]                     # 16 pixels
    cam = np.zeros((1, 16, 16))
    cam[0, 4:8, 4:6] = 0.9                 # 8 of them found
    cam[0, 12, 12] = 0.8                   # and one false pixel
    assert dice(cam, mask, 0.5)[0] == pytest.approx(2 * 8 / (9 + 16))
    assert dice(cam, mask, 0.85)[0] == pytest.approx(2 * 8 / (8 + 16))
    assert dice(cam, mask, 0.95)[0] == 0.0


def test_maps_are_resized_to_the_masks_grid():
    coarse = np.zeros((1, 4, 4), np.float32)
    coarse[0, 1, 1] = 1.0
    fine = to_grid(coarse, (16, 16))
    assert fine.shape == (1, 16, 16) and fine.min() >= 0
    peak = np.unravel_index(fine[0].argmax(), (16, 16))
    assert 4 <= peak[0] <= 7 and 4 <= peak[1] <= 7           # cell (1, 1) covers rows 4-7
    with pytest.raises(ConfigError):
        to_grid(np.zeros((4, 4)), (8, 8))


def test_slice_scores_skip_slices_without_blood_and_the_table_has_intervals():
    rng = np.random.default_rng(0)
    records = []
    for patient in range(6):
        mask = np.stack([box(), np.zeros((16, 16), bool), box(r0=8, r1=12)])
        cam = rng.random((3, 16, 16)) * 0.2
        cam[mask] += 0.8 if patient % 2 == 0 else 0.0
        rows = slice_scores(cam / cam.max(), mask, (0.5, 0.5))
        assert list(rows["slice_pos"]) == [0, 2]
        records.append(rows.assign(method="grad-cam", label="any", patient_id=str(patient)))
    records = pd.concat(records, ignore_index=True)
    threshold = choose_dice_threshold(records)["grad-cam"]
    table = score_table(records, {"grad-cam": threshold}, n_boot=200)
    row = table.iloc[0]
    assert row["n_patients"] == 6 and row["n_slices"] == 12
    assert row["pointing_0mm"] == pytest.approx(records["pointing_0mm"].mean())
    assert row["pointing_0mm_ci_low"] <= row["pointing_0mm"] <= row["pointing_0mm_ci_high"]
    assert row["pointing_0mm_ci_high"] > row["pointing_0mm_ci_low"]   # patients differ
    assert row["dice"] == pytest.approx(records[f"dice@{threshold:g}"].mean())



def test_slice_scores_grow_each_mask_once_and_score_as_the_single_scores(monkeypatch):
    import ichlib.explain.scores as scores

    rng = np.random.default_rng(1)
    mask = np.stack([box(), box(r0=2, r1=5, c0=9, c1=14), np.zeros((16, 16), bool)])
    brain = np.ones_like(mask)
    brain[:, :, :2] = False
    grown_for = []
    real_grow = scores.grow_mask
    monkeypatch.setattr(scores, "grow_mask", lambda m, sp, t: grown_for.append(t) or real_grow(m, sp, t))
    cache: dict[float, np.ndarray] = {}
    maps = [rng.random((3, 16, 16)) for _ in range(3)]
    tables = [slice_scores(cam, mask, (0.7, 1.3), brain=brain, grown=cache) for cam in maps]
    assert sorted(grown_for) == [0.0, 5.0]  # three maps on the same slices: each mask grown once
    monkeypatch.undo()
    keep = mask.any(axis=(1, 2))
    for cam, rows in zip(maps, tables, strict=True):
        np.testing.assert_allclose(rows["energy"], energy_in_mask(cam, mask)[keep])
        np.testing.assert_allclose(rows["energy_in_brain"], energy_in_mask(cam * brain, mask)[keep])
        for t in (0.0, 5.0):
            np.testing.assert_allclose(rows[f"pointing_{t:g}mm"], pointing_game(cam, mask, (0.7, 1.3), t)[keep])
        np.testing.assert_allclose(rows["dice@0.3"], dice(cam, mask, 0.3)[keep])
    with pytest.raises(ConfigError, match="tolerances must be >= 0"):
        slice_scores(maps[0], mask, (0.7, 1.3), tolerances=(-1.0,))
