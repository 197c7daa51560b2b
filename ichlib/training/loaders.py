"""DataLoaders whose order depends only on (seed, epoch), so a resumed run matches an uninterrupted one."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader

from ichlib.preprocess.dataset import ScanDataset


def make_loader(dataset: ScanDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                epoch: int = 0, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose order depends only on ``(seed, epoch)``.

    The shuffle generator is seeded per epoch, so a resumed run shuffles like an
    uninterrupted one; item randomness comes from ``ScanDataset.set_epoch``.
    """
    generator = torch.Generator()
    generator.manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, worker_init_fn=_seed_worker, pin_memory=pin_memory,
                      persistent_workers=False)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
