"""HU bands and masks, by hand: the intracranial mask both baselines use, and the head mask."""

from __future__ import annotations

import numpy as np

from ichlib.preprocess.hu import BLOOD_HU, head_mask, in_band, intracranial_mask
from tests.test_training_baseline import head


def test_mask_is_the_tissue_inside_the_skull_less_a_rim():
    hu = head()
    mask = intracranial_mask(hu)
    yy, xx = np.mgrid[:48, :48]
    brain = np.hypot(yy - 24, xx - 24) < 17
    skull = hu[0] == 1000.0
    # A brain pixel with a skull pixel among its 8 neighbours is in the partial-volume rim.
    padded = np.pad(skull, 1)
    touches = np.zeros_like(skull)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            touches |= padded[1 + dy:49 + dy, 1 + dx:49 + dx]
    expected = brain & ~touches
    assert 0 < expected.sum() < brain.sum()
    assert np.array_equal(mask[0], expected) and np.array_equal(mask[1], expected)


def test_mask_falls_back_to_all_tissue_without_a_skull():
    hu = head()
    hu[hu == 1000.0] = -1000.0  # remove the skull: scalp and brain both count
    mask = intracranial_mask(hu)
    assert np.array_equal(mask, (hu >= 0) & (hu <= 100))


def test_head_mask_fills_the_skull():
    hu = np.full((1, 40, 40), -1000.0)
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    hu[0][r < 15] = 1000.0  # skull
    hu[0][r < 12] = 35.0    # brain
    assert head_mask(hu)[0, 20, 20] and head_mask(hu)[0, 20, 33] and not head_mask(hu)[0, 0, 0]
    brain = intracranial_mask(hu)[0]
    assert brain[20, 20] and not brain[20, 33] and not brain[0, 0]


def test_blood_band_is_closed_at_both_ends():
    hu = np.array([BLOOD_HU[0] - 0.5, BLOOD_HU[0], 70.0, BLOOD_HU[1], BLOOD_HU[1] + 0.5])
    assert in_band(hu).tolist() == [False, True, True, True, False]
