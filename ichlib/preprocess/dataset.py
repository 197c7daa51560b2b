"""From CT-ICH folders to fixed-length model inputs ``[S, C, H, W]``, with an on-disk cache.

The pipeline per scan: HU volume -> in-plane resize (antialiased) -> pick ``S`` slices
(:func:`~ichlib.preprocess.sampling.uniform_indices`) -> window into ``C`` channels. HU are resampled
*before* windowing, the way a scanner reconstructing at lower resolution would average
them, which also makes the cache independent of the windows: it stores resized HU once per
scan (float16, atomic ``.npy``), so later epochs never decode NIfTI again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from ichlib.errors import ConfigError, DataError, WriteError
from ichlib.io.load import load_mask, load_volume
from ichlib.preprocess.cache import VolumeCache
from ichlib.preprocess.resize import resample_volume, resize_slices
from ichlib.preprocess.sampling import covering_indices, uniform_indices
from ichlib.preprocess.windowing import multi_window, resolve_windows

if TYPE_CHECKING:  # a type only: prediction reads scans without pandas (start-up time)
    from ichlib.io.tables import CtIchData

Augment = Callable[[torch.Tensor, np.random.Generator], torch.Tensor]


@dataclass(frozen=True)
class PreprocessConfig:
    """Every setting that turns a scan into model input. Stored in checkpoints.

    Attributes:
        windows: Window names (see :data:`~ichlib.preprocess.windowing.WINDOWS`), one channel each.
        img_size: Output height and width.
        seq_len: Number of slices ``S`` sampled per scan.
    """

    windows: tuple[str, ...] = ("brain",)
    img_size: int = 256
    seq_len: int = 16

    def __post_init__(self) -> None:
        windows = (self.windows,) if isinstance(self.windows, str) else tuple(self.windows)
        if len(windows) == 1 and "," in windows[0]:
            windows = tuple(w.strip() for w in windows[0].split(","))
        object.__setattr__(self, "windows", windows)
        resolve_windows(windows)
        if self.img_size < 8:
            raise ConfigError(f"img_size must be >= 8, got {self.img_size}")
        if self.seq_len < 1:
            raise ConfigError(f"seq_len must be >= 1, got {self.seq_len}")

    @property
    def n_channels(self) -> int:
        """Number of input channels ``C``."""
        return len(self.windows)

    def to_dict(self) -> dict:
        """Plain-dict form (lists and ints), safe for ``torch.load(weights_only=True)``."""
        d = asdict(self)
        d["windows"] = list(self.windows)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(windows=tuple(d["windows"]), img_size=int(d["img_size"]), seq_len=int(d["seq_len"]))




def to_model_input(resized_hu: np.ndarray | torch.Tensor, windows: Sequence[str]) -> torch.Tensor:
    """Window resized HU slices ``[S, H, W]`` into model input ``[S, C, H, W]`` (float32)."""
    return multi_window(torch.as_tensor(np.asarray(resized_hu), dtype=torch.float32), windows)


def prepare_scan(hu: np.ndarray, config: PreprocessConfig,
                 indices: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Preprocess one HU volume ``[N, H, W]`` for prediction.

    Returns:
        ``x [S, C, H, W]`` and the slice indices used (0-based; ``SliceNumber - 1``).
    """
    if indices is None:
        indices = uniform_indices(hu.shape[0], config.seq_len)
    chosen = np.unique(indices)
    resized = resample_volume(hu[chosen], config.img_size)
    lookup = np.searchsorted(chosen, indices)
    return to_model_input(resized[lookup], config.windows), np.asarray(indices)






@dataclass
class ScanDataset(Dataset):
    """Scans of a CT-ICH folder as fixed-length slice sequences.

    Each item is a dict:

    - ``x``: float32 ``[S, C, H, W]`` windowed slices;
    - ``slice_labels``: float32 ``[S, 6]`` for the sampled slices (columns as LABELS);
    - ``scan_labels``: float32 ``[6]``: the patient-level labels, except in training,
      where they are the OR of the sampled slices' labels (:func:`sequence_labels`), so
      no target says "blood" for a sequence none of whose slices shows any;
    - ``slice_indices``: int64 ``[S]`` 0-based indices into the scan (SliceNumber - 1);
    - ``patient_id``: str.

    The default DataLoader collate turns these into ``x [B, S, C, H, W]`` etc.

    With ``all_slices`` (evaluation) an item holds every slice of the scan instead:
    ``x [N, C, H, W]``, ``slice_labels [N, 6]``, ``slice_indices = 0 .. N - 1``, plus
    ``samplings``: int64 ``[K, S]`` from :func:`~ichlib.sampling.covering_indices`, for
    :meth:`ichlib.model.CNNBiLSTM.forward_scan`. Scans differ in ``N``, so load them one
    per batch.

    Attributes:
        data: The validated folder from :func:`~ichlib.io.ctich.read_ct_ich`.
        patient_ids: Which patients this dataset serves (e.g. one split).
        config: Windows, image size and ``S``.
        cache_dir: Where resized volumes are cached; None reads and resizes the NIfTI on
            every access (slow; the plain reference path).
        train: Jitter the slice sampling and apply ``augment``.
        augment: Called as ``augment(x, rng)`` on training items; must transform all S
            slices of a scan the same way.
        seed: Base seed; an item's randomness depends only on (seed, epoch, index).
        all_slices: Serve whole scans (every slice) with their covering samplings.
    """

    data: CtIchData
    patient_ids: Sequence[str]
    config: PreprocessConfig = field(default_factory=PreprocessConfig)
    cache_dir: str | os.PathLike | None = None
    train: bool = False
    augment: Augment | None = None
    seed: int = 0
    epoch: int = 0
    all_slices: bool = False

    def __post_init__(self) -> None:
        if self.all_slices and self.train:
            raise ConfigError("all_slices is for evaluation; training samples S slices per scan")
        self.patient_ids = list(self.patient_ids)
        unknown = [p for p in self.patient_ids if p not in self.data.scans]
        if unknown:
            raise DataError(self.data.root, f"unknown or excluded patient(s): {', '.join(unknown)}")
        self._cache = VolumeCache(self.cache_dir, self.config.img_size) if self.cache_dir else None
        self._labels = {pid: self.data.slice_labels(pid) for pid in self.patient_ids}

    def __len__(self) -> int:
        return len(self.patient_ids)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch, which reseeds jitter and augmentation for the next pass."""
        self.epoch = int(epoch)

    def resized_volume(self, patient_id: str) -> np.ndarray:
        """The whole resized HU volume ``[N, H, W]`` of a patient (cached if enabled)."""
        if self._cache is not None:
            return self._cache.get(self.data.scans[patient_id], n_slices=len(self._labels[patient_id]))
        return resample_volume(load_volume(self.data.scans[patient_id]).hu, self.config.img_size)

    def __getitem__(self, index: int) -> dict:
        pid = self.patient_ids[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        labels = self._labels[pid]
        n_slices = labels.shape[0]
        if self.all_slices:
            idx = np.arange(n_slices, dtype=np.int64)
        else:
            idx = uniform_indices(n_slices, self.config.seq_len, jitter=self.train, rng=rng)
        if self._cache is not None:
            volume = self._cache.get(self.data.scans[pid], n_slices=n_slices)
            x = to_model_input(np.asarray(volume[idx], dtype=np.float32), self.config.windows)
        else:
            x, _ = prepare_scan(load_volume(self.data.scans[pid]).hu, self.config, idx)
        if self.train and self.augment is not None:
            x = self.augment(x, rng)
        scan_labels = sequence_labels(labels[idx]) if self.train else self.data.scan_labels(pid)
        item = {
            "x": x.contiguous(),
            "slice_labels": torch.from_numpy(labels[idx]),
            "scan_labels": torch.from_numpy(scan_labels),
            "slice_indices": torch.from_numpy(idx),
            "patient_id": pid,
        }
        if self.all_slices:
            item["samplings"] = torch.from_numpy(covering_indices(n_slices, self.config.seq_len))
        return item

    def warm_cache(self) -> list[str]:
        """Build the cache for every patient; returns the ids that failed (and why, via errors)."""
        if self._cache is None:
            return []
        failed = []
        for pid in self.patient_ids:
            try:
                self.resized_volume(pid)
            except WriteError:
                raise  # the cache folder is full or read-only: not this scan's fault
            except DataError:
                failed.append(pid)
        return failed


def sequence_labels(slice_labels: np.ndarray) -> np.ndarray:
    """The target of a sequence of slices: per label, whether any of its slices has it.

    Args:
        slice_labels: ``[S, 6]`` 0/1 labels of the slices the model reads.

    Returns:
        float32 ``[6]``. For the sampled slices of a scan this can be 0 where the
        patient's label is 1 (the blood lies between the sampled slices); never the other
        way round.
    """
    labels = np.asarray(slice_labels, dtype=np.float32)
    if labels.ndim != 2 or labels.shape[0] == 0:
        raise ConfigError(f"expected slice labels [S, labels] with S >= 1, got shape {labels.shape}")
    return labels.max(axis=0)


def sampled_mask(data: CtIchData, patient_id: str, indices: np.ndarray, img_size: int) -> np.ndarray:
    """The patient's hemorrhage mask at the sampled slices, resized: bool ``[S, H, W]``.

    A pixel is inside when at least half of its area was inside at full resolution.
    """
    path = data.masks.get(patient_id)
    if path is None:
        raise DataError(data.root / "masks", f"no mask for patient {patient_id}")
    mask = load_mask(path)[np.asarray(indices)]
    return resize_slices(mask.astype(np.float32), img_size).numpy() >= 0.5

