import numpy as np
import pytest
import torch

from ichlib.errors import ConfigError
from ichlib.preprocess.resize import resize_slices


def test_shapes_for_3d_and_4d():
    assert resize_slices(np.zeros((5, 64, 48), np.float32), 32).shape == (5, 32, 32)
    assert resize_slices(torch.zeros(5, 3, 64, 64), (16, 24)).shape == (5, 3, 16, 24)


def test_constant_stays_constant_and_same_size_is_identity():
    x = np.full((2, 40, 40), 37.0, np.float32)
    np.testing.assert_allclose(resize_slices(x, 20).numpy(), 37.0, atol=1e-5)
    y = np.random.default_rng(0).normal(size=(2, 20, 20)).astype(np.float32)
    np.testing.assert_array_equal(resize_slices(y, 20).numpy(), y)


def test_downsampling_is_antialiased():
    # A one-pixel checkerboard has mean 0.5; antialiased 4x downsampling gives ~0.5 everywhere,
    # plain bilinear would alias to large swings.
    board = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)[None]
    out = resize_slices(board, 16).numpy()
    assert np.abs(out[0, 2:-2, 2:-2] - 0.5).max() < 0.05


def test_bad_shape_is_refused():
    with pytest.raises(ConfigError):
        resize_slices(np.zeros((4, 4)), 2)
