"""The HU check every volume reader runs (ichlib.io.volume.hu_problem)."""

from __future__ import annotations

import numpy as np

from ichlib.io.volume import hu_problem


def head_like() -> np.ndarray:
    hu = np.full((2, 8, 8), -1000.0, np.float32)
    hu[:, 2:6, 2:6] = 35.0
    hu[:, 1, 1:7] = 800.0
    return hu


def test_a_head_ct_passes():
    assert hu_problem(head_like()) is None


def test_each_problem_is_named():
    nan = head_like()
    nan[0, 3, 3], nan[1, 3, 3] = np.nan, np.inf
    assert hu_problem(nan) == "2 voxels are NaN or Inf; refusing to guess their HU"
    assert hu_problem(np.full((2, 4, 4), -1000.0)) == "volume is constant (-1000 everywhere); it holds no image"
    normalised = np.linspace(0, 1, 32, dtype=np.float32).reshape(2, 4, 4)
    assert hu_problem(normalised).startswith("all values lie in [0, 1]: a normalised image or a mask")
