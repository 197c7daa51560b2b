"""Scan augmentation: one transform for all slices, reproducible, in range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ichlib.errors import ConfigError
from ichlib.preprocess.augment import ScanAugment, augment


def scan(s: int = 5, c: int = 2, h: int = 24, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(s, c, h, w, generator=g)


def test_every_slice_gets_the_same_transform():
    one = scan(s=1)
    x = one.repeat(6, 1, 1, 1)
    for seed in range(10):
        out = augment(x, np.random.default_rng(seed))
        for k in range(1, 6):
            assert torch.equal(out[k], out[0])


def test_slice_k_of_the_scan_is_transformed_like_slice_k_alone():
    x = scan(s=4)
    out = augment(x, np.random.default_rng(3))
    for k in range(4):
        alone = augment(x[k:k + 1], np.random.default_rng(3))
        torch.testing.assert_close(out[k:k + 1], alone)


def test_deterministic_given_the_generator():
    x = scan()
    a = augment(x, np.random.default_rng(11))
    b = augment(x, np.random.default_rng(11))
    c = augment(x, np.random.default_rng(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_output_shape_dtype_and_range():
    x = scan()
    x[0, 0] = 1.0  # saturated slice: the offset must not push it over 1
    for seed in range(20):
        out = augment(x, np.random.default_rng(seed))
        assert out.shape == x.shape and out.dtype == torch.float32
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_input_is_not_modified():
    x = scan()
    before = x.clone()
    augment(x, np.random.default_rng(0))
    assert torch.equal(x, before)


def test_zero_ranges_are_the_identity_and_flip_is_a_mirror():
    x = scan()
    still = ScanAugment(flip_p=0.0, max_rotate=0, max_shift=0, max_scale=0, max_offset=0)
    torch.testing.assert_close(still(x, np.random.default_rng(0)), x, atol=1e-5, rtol=0)
    mirror = ScanAugment(flip_p=1.0, max_rotate=0, max_shift=0, max_scale=0, max_offset=0)
    torch.testing.assert_close(mirror(x, np.random.default_rng(0)), x.flip(-1), atol=1e-5, rtol=0)


def test_shift_moves_content_by_the_drawn_fraction():
    x = torch.zeros(1, 1, 50, 50)
    x[0, 0, 25, 10] = 1.0
    shift = ScanAugment(flip_p=0.0, max_rotate=0, max_shift=0.06, max_scale=0, max_offset=0)
    rng = np.random.default_rng(5)
    out = shift(x, rng)
    # Replay the draws: flip, angle, then shift x and shift y.
    replay = np.random.default_rng(5)
    replay.random()
    replay.uniform(0, 0)
    dx, dy = replay.uniform(-0.06, 0.06, size=2)
    row, col = np.unravel_index(int(out[0, 0].argmax()), (50, 50))
    assert col == pytest.approx(10 + dx * 50, abs=1)
    assert row == pytest.approx(25 + dy * 50, abs=1)


def test_bad_input_is_refused():
    with pytest.raises(ConfigError, match=r"\[S, C, H, W\]"):
        augment(torch.rand(3, 8, 8), np.random.default_rng(0))
    with pytest.raises(ConfigError):
        ScanAugment(flip_p=2.0)
