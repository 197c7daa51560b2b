"""Maps that know no model: the chance prior and the intracranial intensity map, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ichlib.explain.baselines import chance_prior, intensity_map
from ichlib.explain.scores import energy_in_mask, pointing_game


def head(n: int = 2, size: int = 32, blob: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Air, a 1000 HU skull ring, 30 HU brain, a 70 HU bleed on slice 0 and a 70 HU scalp spot."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2)
    hu = np.full((n, size, size), -1000.0, np.float32)
    hu[:, r < 15] = 60.0     # scalp (in the blood band, but outside the skull)
    hu[:, r < 14] = 1000.0   # skull
    hu[:, r < 12] = 30.0     # brain
    mask = np.zeros(hu.shape, bool)
    if blob:
        mask[0, 12:16, 12:16] = True
        hu[mask] = 70.0
    return hu, mask


def test_intensity_map_is_the_blood_band_inside_the_skull():
    hu, mask = head()
    base = intensity_map(hu, sigma_px=0)
    # exactly the bleed: the 60 HU scalp ring is in the band but outside the skull
    np.testing.assert_array_equal(base > 0, mask)
    assert base.max() == 1.0 and base.dtype == np.float32
    assert pointing_game(base, mask)[0] == 1.0 and energy_in_mask(base, mask)[0] == 1.0
    assert not intensity_map(head(blob=False)[0]).any()


def test_chance_prior_is_the_brain_share_of_each_grid_cell():
    hu, _ = head(n=1, size=32)
    prior = chance_prior(hu, (4, 4))
    # the brain disc (radius 12 of 32) covers the four centre cells and little of the corners
    yy, xx = np.mgrid[:32, :32]
    brain = np.hypot(yy - 15.5, xx - 15.5) < 12
    share = brain.reshape(4, 8, 4, 8).mean(axis=(1, 3))
    assert prior.shape == hu.shape and prior.max() == pytest.approx(1.0)
    assert prior[0, 12:20, 12:20].min() == pytest.approx(1.0)          # centre cells are all brain
    assert prior[0, 0, 0] == pytest.approx(share[0, 0] / share.max(), abs=0.02)
    np.testing.assert_allclose(prior[0], prior[0][::-1, ::-1], atol=1e-5)
    np.testing.assert_allclose(prior[0], prior[0].T, atol=1e-5)
    # a centred brain fills the four quadrants of a 2 x 2 grid alike: a flat map
    assert np.ptp(chance_prior(hu, (2, 2))) == pytest.approx(0, abs=1e-6)


def test_chance_prior_scores_near_its_expected_value_on_random_masks():
    rng = np.random.default_rng(0)
    hu, _ = head(n=1, size=64)
    prior = chance_prior(hu, (1, 1))[0]          # flat over the slice: every pixel ties
    scores, expected = [], []
    for _ in range(200):
        r, c, h, w = rng.integers(16, 40), rng.integers(16, 40), rng.integers(2, 10), rng.integers(2, 10)
        mask = np.zeros((64, 64), bool)
        mask[r:r + h, c:c + w] = True
        scores.append(pointing_game(prior[None], mask[None])[0])
        expected.append(mask.sum() / mask.size)
    # a map that knows nothing points at the blood as often as its area says
    np.testing.assert_allclose(scores, expected)
    assert np.mean(scores) == pytest.approx(np.mean(expected))
