"""Fixed-length slice sampling: pick ``S`` slices from a scan of any length."""

from __future__ import annotations

import numpy as np

from ichlib.errors import ConfigError


def uniform_indices(n_slices: int, seq_len: int, jitter: bool = False,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """Choose ``seq_len`` sorted slice indices spread evenly from the first slice to the last.

    Without jitter, index ``i`` is ``round(i * (n_slices - 1) / (seq_len - 1))`` (halves
    round up), so the first and last slices are always included. When
    ``n_slices < seq_len`` some slices repeat: every slice appears at least once and the
    sequence is non-decreasing, so the BiLSTM still sees the scan in order. With
    ``seq_len == 1`` the middle slice is returned.

    With ``jitter`` (training), the scan is cut into ``seq_len`` equal segments and one
    index is drawn uniformly inside each, so indices stay sorted and cover the scan.

    Args:
        n_slices: Number of slices in the scan (>= 1).
        seq_len: Number of indices to return (>= 1).
        jitter: Draw a random index per segment instead of the evenly spaced one.
        rng: Random generator for jitter (a fresh unseeded one if None).

    Returns:
        int64 array of shape ``[seq_len]`` with values in ``[0, n_slices)``.
    """
    if n_slices < 1:
        raise ConfigError(f"a scan needs at least one slice, got n_slices={n_slices}")
    if seq_len < 1:
        raise ConfigError(f"seq_len must be >= 1, got {seq_len}")
    if jitter:
        rng = rng if rng is not None else np.random.default_rng()
        edges = np.linspace(0.0, n_slices, seq_len + 1)
        draws = edges[:-1] + rng.random(seq_len) * (edges[1:] - edges[:-1])
        return np.minimum(np.floor(draws), n_slices - 1).astype(np.int64)
    if seq_len == 1:
        return np.array([(n_slices - 1) // 2], dtype=np.int64)
    positions = np.arange(seq_len) * (n_slices - 1) / (seq_len - 1)
    return np.floor(positions + 0.5).astype(np.int64)
