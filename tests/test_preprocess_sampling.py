import numpy as np
import pytest

from ichlib.errors import ConfigError
from ichlib.preprocess.sampling import covering_indices, uniform_indices


def test_hand_computed_example():
    # 10 slices, 4 samples: positions 0, 3, 6, 9
    np.testing.assert_array_equal(uniform_indices(10, 4), [0, 3, 6, 9])
    # 40 slices, 16 samples: i * 39 / 15 = 2.6 i, rounded half up
    expected = [int(np.floor(i * 39 / 15 + 0.5)) for i in range(16)]
    np.testing.assert_array_equal(uniform_indices(40, 16), expected)


@pytest.mark.parametrize("n", [1, 2, 5, 16, 28, 58, 300])
@pytest.mark.parametrize("s", [1, 2, 7, 16])
def test_length_order_range_and_ends(n, s):
    idx = uniform_indices(n, s)
    assert idx.shape == (s,) and idx.dtype == np.int64
    assert np.all(np.diff(idx) >= 0)
    assert idx.min() >= 0 and idx.max() < n
    if s > 1:
        assert idx[0] == 0 and idx[-1] == n - 1
    if n >= s:
        assert len(np.unique(idx)) == s  # no repeats when there are enough slices


def test_fewer_slices_than_seq_len_repeats_every_slice():
    idx = uniform_indices(5, 16)
    assert set(idx.tolist()) == {0, 1, 2, 3, 4}
    assert np.all(np.diff(idx) >= 0)
    # positions i * 4 / 15 rounded: the end slices get half the repeats of inner ones
    np.testing.assert_array_equal(idx, [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4])


def test_single_sample_is_the_middle_slice():
    assert uniform_indices(9, 1).tolist() == [4]
    assert uniform_indices(10, 1).tolist() == [4]


def test_jitter_stays_in_segments_and_is_seeded():
    a = uniform_indices(40, 16, jitter=True, rng=np.random.default_rng(1))
    b = uniform_indices(40, 16, jitter=True, rng=np.random.default_rng(1))
    c = uniform_indices(40, 16, jitter=True, rng=np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    edges = np.linspace(0, 40, 17)
    assert np.all(a >= np.floor(edges[:-1])) and np.all(a < np.ceil(edges[1:]))
    assert np.all(np.diff(a) >= 0)


def test_jitter_varies_over_draws():
    rng = np.random.default_rng(0)
    draws = {tuple(uniform_indices(40, 8, jitter=True, rng=rng)) for _ in range(20)}
    assert len(draws) > 10


@pytest.mark.parametrize("n,s", [(0, 4), (4, 0), (-1, 3)])
def test_bad_arguments(n, s):
    with pytest.raises(ConfigError):
        uniform_indices(n, s)


# --- covering samplings: every slice counts at evaluation -------------------------------

@pytest.mark.parametrize("s", [16, 1, 5])
def test_covering_samplings_reach_every_slice(s):
    for n in range(1, 121):
        samplings = covering_indices(n, s)
        k = -(-n // s)
        assert samplings.shape == (k, s) and samplings.dtype == np.int64
        assert samplings.min() >= 0 and samplings.max() < n
        # every slice is read by at least one sampling
        assert set(samplings.ravel().tolist()) == set(range(n)), n
        lo, hi = n // s, -(-n // s)
        for row in samplings:
            steps = np.diff(row)
            # sorted, and evenly spaced like a training draw: neighbours n / s slices apart
            assert np.all(steps >= 0)
            assert set(steps.tolist()) <= {lo, hi}, (n, row)


def test_covering_samplings_hand_computed():
    # 32 slices, S = 16: two samplings, the even and the odd slices
    np.testing.assert_array_equal(covering_indices(32, 16), [list(range(0, 32, 2)), list(range(1, 32, 2))])
    # 5 slices, S = 4: K = 2, grid step 5 / 8; sampling 0 at (0.5, 2.5, 4.5, 6.5) * 0.625
    np.testing.assert_array_equal(covering_indices(5, 4), [[0, 1, 2, 4], [0, 2, 3, 4]])
    # as many slices as S: one sampling, each slice once
    np.testing.assert_array_equal(covering_indices(16, 16), [list(range(16))])
    # fewer slices than S: one sampling, every slice in order, some repeated
    np.testing.assert_array_equal(covering_indices(3, 6), [[0, 0, 1, 1, 2, 2]])


def test_a_single_uniform_sampling_misses_slices_that_covering_reads():
    # what covering fixes: one sampling of 16 out of 43 slices skips 27 of them
    assert len(set(uniform_indices(43, 16).tolist())) == 16
    assert len(set(covering_indices(43, 16).ravel().tolist())) == 43


@pytest.mark.parametrize(("n", "s"), [(0, 16), (10, 0), (-3, 4)])
def test_covering_refuses_bad_sizes(n, s):
    with pytest.raises(ConfigError):
        covering_indices(n, s)
