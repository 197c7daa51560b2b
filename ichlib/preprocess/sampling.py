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


def covering_indices(n_slices: int, seq_len: int) -> np.ndarray:
    """Interleaved uniform samplings of ``seq_len`` slices that together cover every slice.

    Training draws one slice in each of ``seq_len`` equal segments of the scan
    (:func:`uniform_indices` with jitter), so neighbouring picks are ``n_slices / seq_len``
    slices apart. At evaluation ``K = ceil(n_slices / seq_len)`` samplings with that same
    spacing are offset from each other by ``1 / K`` of a segment: sampling ``k`` takes
    ``floor((i * K + k + 0.5) * d)`` for ``i = 0 .. seq_len - 1`` with
    ``d = n_slices / (seq_len * K) <= 1``. All ``K * seq_len`` positions form one evenly
    spaced grid with step ``d <= 1`` from ``d / 2`` to ``n_slices - d / 2``, so every slice
    is in at least one sampling. A scan with at most ``seq_len`` slices gets one sampling
    in which every slice appears (some twice), in order.

    Args:
        n_slices: Number of slices in the scan (>= 1).
        seq_len: Slices per sampling, ``S`` (>= 1).

    Returns:
        int64 ``[K, seq_len]``; each row sorted (non-decreasing) with values in
        ``[0, n_slices)``.
    """
    if n_slices < 1:
        raise ConfigError(f"a scan needs at least one slice, got n_slices={n_slices}")
    if seq_len < 1:
        raise ConfigError(f"seq_len must be >= 1, got {seq_len}")
    k = -(-n_slices // seq_len)
    step = n_slices / (seq_len * k)
    grid = np.arange(seq_len)[None, :] * k + np.arange(k)[:, None]  # [K, S] positions on the grid
    return np.minimum(np.floor((grid + 0.5) * step), n_slices - 1).astype(np.int64)
