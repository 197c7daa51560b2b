"""The plain reference implementation that the benchmarks measure ichlib's fast path against.

It is what the design describes, done the direct way: nibabel ``get_fdata`` (float64) on
every access, every slice of the scan resized and windowed, then ``S`` slices sampled;
fp32 eager PyTorch with contiguous tensors and ``num_workers=0``. It computes the same
numbers as ichlib (same resize, windows and sampling functions, resize before window), so
the reference and the fast path differ only in how they get there and their outputs can
be compared directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import Dataset

from ichlib.io.tables import CtIchData
from ichlib.model import CNNBiLSTM
from ichlib.preprocess.dataset import Augment, PreprocessConfig
from ichlib.preprocess.resize import resize_slices
from ichlib.preprocess.sampling import covering_indices, uniform_indices
from ichlib.preprocess.windowing import multi_window


def reference_load(path: str) -> np.ndarray:
    """``nib.load(path).get_fdata()`` as float64 ``[slices, H, W]`` (ichlib's axis convention)."""
    return np.transpose(nib.load(str(path)).get_fdata(), (2, 1, 0))


def reference_preprocess(hu: np.ndarray, config: PreprocessConfig) -> torch.Tensor:
    """Resize and window every slice of ``hu [N, H, W]``: float32 ``[N, C, H, W]``."""
    slices = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))
    return multi_window(resize_slices(slices, config.img_size), config.windows)


def reference_scan(path: str, config: PreprocessConfig) -> torch.Tensor:
    """One scan to model input ``[S, C, H, W]``: load, preprocess all slices, sample ``S``."""
    x = reference_preprocess(reference_load(path), config)
    return x[torch.from_numpy(uniform_indices(x.shape[0], config.seq_len))]


class ReferenceDataset(Dataset):
    """Training items like :class:`ichlib.ScanDataset`'s, made the plain way on every access.

    The slice jitter and augmentation use the same per-item generator as ScanDataset
    (seeded by ``(seed, epoch, index)``), so both datasets serve the same items.

    Args:
        data: A CT-ICH folder from :func:`ichlib.read_ct_ich`.
        patient_ids: The patients served.
        config: Windows, image size and ``S``.
        augment: Called as ``augment(x, rng)``; None for none.
        seed: Base seed of the per-item generator.
    """

    def __init__(self, data: CtIchData, patient_ids: Sequence[str], config: PreprocessConfig,
                 augment: Augment | None = None, seed: int = 0) -> None:
        self.data, self.patient_ids, self.config = data, list(patient_ids), config
        self.augment, self.seed, self.epoch = augment, seed, 0

    def __len__(self) -> int:
        return len(self.patient_ids)

    def set_epoch(self, epoch: int) -> None:
        """Reseed the jitter and augmentation for the next pass."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        pid = self.patient_ids[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        x = reference_preprocess(reference_load(self.data.scans[pid]), self.config)
        labels = self.data.slice_labels(pid)
        idx = uniform_indices(x.shape[0], self.config.seq_len, jitter=True, rng=rng)
        x = x[torch.from_numpy(idx)]
        if self.augment is not None:
            x = self.augment(x, rng)
        return {"x": x.contiguous(), "slice_labels": torch.from_numpy(labels[idx]),
                "scan_labels": torch.from_numpy(self.data.scan_labels(pid)),
                "slice_indices": torch.from_numpy(idx), "patient_id": pid}


def reference_predict(model: CNNBiLSTM, path: str, config: PreprocessConfig) -> np.ndarray:
    """Patient-level probabilities ``[6]`` for one scan: reference input, fp32 eager, no_grad.

    The same whole-scan prediction as :func:`ichlib.predict.predict_scan`, done the direct
    way: every covering sampling of ``S`` slices goes through the whole model on its own
    (the CNN re-reads a slice each time it is sampled), and the per-label maximum of the
    samplings' patient-level logits is taken.
    """
    model.eval()
    x = reference_preprocess(reference_load(path), config)
    with torch.no_grad():
        logits = [model(x[torch.from_numpy(rows)].unsqueeze(0)).scan_logits[0]
                  for rows in covering_indices(x.shape[0], config.seq_len)]
    return torch.sigmoid(torch.stack(logits).amax(dim=0)).numpy().astype(np.float64)
