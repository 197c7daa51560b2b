"""Every DataLoader of training and evaluation, in one process or as one of several.

The order of an epoch depends only on ``(seed, epoch)`` (:func:`epoch_order`), so a resumed
run matches an uninterrupted one, and :class:`EpochSampler` deals that same order to the
processes under ``torchrun``:

- training (:func:`make_train_loader`): ``batch_size`` is the global batch. Position ``i`` of
  the epoch's order goes to rank ``i mod W``, so the ranks' shares of step ``k`` are exactly
  the single-process batch ``k``. Each scan then carries a loss weight
  (:data:`~ichlib.losses.LOSS_WEIGHT_KEY`, :class:`WeightedEpochSampler`) that makes DDP's
  gradient average the mean over the global batch, also for a short last batch; the padding
  the sampler adds weighs 0.
- evaluation (:func:`make_eval_loader`): whole single-process batches are dealt round-robin
  (:func:`eval_batches`), without padding; :func:`ichlib.training.distributed.merge_eval_shards`
  puts the ranks' results back in loader order.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ichlib.losses import LOSS_WEIGHT_KEY
from ichlib.preprocess.dataset import ScanDataset
from ichlib.training.config import TrainConfig


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A torch generator seeded from ``(seed, epoch)`` alone."""
    generator = torch.Generator()
    generator.manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1))
    return generator


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order in which one process trains on ``n`` scans in ``epoch``.

    It is the order ichlib's single-process loader had before :class:`EpochSampler`, which
    every run keeps: ``DataLoader(shuffle=True, generator=epoch_generator(seed, epoch))``
    read through :meth:`~ichlib.training.log.RunLog.bar`. tqdm (``tqdm.auto``) opens an
    iterator of the loader when it is created, and the loop opens another; each draws the
    workers' base seed (one int64) from the generator, then the second one's
    ``RandomSampler`` draws ``torch.randperm(n)``.
    """
    generator = epoch_generator(seed, epoch)
    for _ in range(2):  # the two iterators' base seeds
        torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(n, generator=generator).tolist()


class EpochSampler(DistributedSampler):
    """:func:`epoch_order`, dealt to ``num_replicas`` ranks (one by default).

    Position ``i`` of the order goes to rank ``i mod W``, padded at the end (as
    ``DistributedSampler`` pads) so that every rank takes as many items. Call
    :meth:`set_epoch` before each epoch.

    Args:
        dataset: What to sample; only its length is used.
        seed: The run's seed.
        num_replicas, rank: As for ``DistributedSampler`` (no process group needed).
    """

    def __init__(self, dataset: Sequence | Dataset, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=False)

    def positions(self) -> range:
        """This rank's positions in the padded order of the epoch."""
        return range(self.rank, self.total_size, self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(len(self.dataset), self.seed, self.epoch)
        return iter([order[p % len(order)] for p in self.positions()])


class WeightedEpochSampler(EpochSampler):
    """:class:`EpochSampler` whose items are ``(index, loss weight)`` for a global batch.

    A scan of a global batch of ``m`` scans weighs ``W / m`` and the padding 0, so a rank's
    weighted loss (:class:`~ichlib.losses.ScanSliceLoss`), averaged over the ``W`` ranks, is
    the mean over the global batch.

    Args:
        dataset, seed, num_replicas, rank: As for :class:`EpochSampler`.
        batch_size: The global batch size, a positive multiple of ``num_replicas``.

    Raises:
        ValueError: If ``batch_size`` is not.
    """

    def __init__(self, dataset: Sequence | Dataset, batch_size: int, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0) -> None:
        super().__init__(dataset, seed, num_replicas, rank)
        if batch_size < 1 or batch_size % num_replicas:
            raise ValueError(f"batch_size {batch_size} must be a positive multiple of {num_replicas}")
        self.batch_size = int(batch_size)

    def __iter__(self) -> Iterator[tuple[int, float]]:
        n, batch = len(self.dataset), self.batch_size
        for index, p in zip(super().__iter__(), self.positions(), strict=True):
            yield index, (0.0 if p >= n else self.num_replicas / min(batch, n - (p - p % batch)))


class WeightedItems(Dataset):
    """Wraps a dataset of dicts: item ``(index, weight)`` is ``dataset[index]`` plus
    :data:`~ichlib.losses.LOSS_WEIGHT_KEY`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, float]) -> dict:
        index, weight = item
        return {**self.dataset[index], LOSS_WEIGHT_KEY: float(weight)}


def eval_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """Batches ``rank, rank + W, ...`` of an unshuffled loader over ``n`` items (may be none)."""
    starts = range(0, n, batch_size)
    return [list(range(s, min(s + batch_size, n))) for s in starts][rank::world_size]


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                epoch: int = 0, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A single-process DataLoader whose order depends only on ``(seed, epoch)``.

    Shuffled, it reads :class:`EpochSampler`'s order, the same for any ``num_workers`` (a
    ``RandomSampler``'s also depended on the workers' prefetching); the generator seeded per
    epoch seeds the workers, so a resumed run reads like an uninterrupted one. Item
    randomness comes from ``ScanDataset.set_epoch``.
    """
    sampler = None
    if shuffle:
        sampler = EpochSampler(dataset, seed)
        sampler.set_epoch(epoch)
    return _loader(dataset, batch_size=batch_size, sampler=sampler, generator=epoch_generator(seed, epoch),
                   num_workers=num_workers, pin_memory=pin_memory)


def make_train_loader(dataset: ScanDataset, config: TrainConfig, epoch: int, pin_memory: bool = False,
                      num_replicas: int = 1, rank: int = 0) -> DataLoader:
    """The training loader of ``epoch``: shuffled by ``(config.seed, epoch)``.

    With several ranks it is rank ``rank``'s share of every global batch of
    ``config.batch_size`` scans, each carrying its loss weight (:class:`WeightedEpochSampler`);
    the workers' seeds then come from torch's generator, which
    :meth:`~ichlib.training.distributed.DistContext.seed_epoch` seeds per rank.
    """
    if num_replicas == 1:
        return make_loader(dataset, config.batch_size, shuffle=True, seed=config.seed, epoch=epoch,
                           num_workers=config.num_workers, pin_memory=pin_memory)
    sampler = WeightedEpochSampler(dataset, config.batch_size, config.seed, num_replicas, rank)
    sampler.set_epoch(epoch)
    return _loader(WeightedItems(dataset), batch_size=config.batch_size // num_replicas, sampler=sampler,
                   num_workers=config.num_workers, pin_memory=pin_memory)


def make_eval_loader(dataset: ScanDataset, config: TrainConfig, pin_memory: bool = False,
                     num_replicas: int = 1, rank: int = 0) -> DataLoader:
    """The unshuffled validation or test loader: one whole scan per batch when the dataset
    serves all slices, else ``config.batch_size`` scans. With several ranks it holds rank
    ``rank``'s batches (:func:`eval_batches`)."""
    batch_size = 1 if dataset.all_slices else config.batch_size
    return _loader(dataset, batch_sampler=eval_batches(len(dataset), batch_size, rank, num_replicas),
                   generator=epoch_generator(0, 0), num_workers=config.num_workers, pin_memory=pin_memory)


def _loader(dataset: Dataset, **options: object) -> DataLoader:
    """The one place a DataLoader is made, with the options every loader shares."""
    return DataLoader(dataset, worker_init_fn=_seed_worker, persistent_workers=False, **options)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
