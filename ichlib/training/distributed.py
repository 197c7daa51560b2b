"""Training on several processes with ``torchrun`` and DistributedDataParallel (DDP).

``torchrun`` starts one process per GPU (or per CPU worker) and tells each its place in
the environment variables ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``. :func:`session`
reads them, joins the process group (NCCL on CUDA, gloo on the CPU) and returns a
:class:`DistContext`, which :func:`ichlib.training.fit.fit` uses for everything that differs
from a single process. Without ``torchrun`` (or with one process) the context is
inactive and every method is a no-op, so single-process runs are unchanged.

The rules that make a run independent of the number of processes ``W``:

- ``batch_size`` is the **global** batch: scans per optimizer step over all processes.
  Each process takes ``batch_size / W`` of them, so the learning rate needs no scaling
  rule and a run can be resumed with another ``W``.
- Every epoch visits the scans in the order the single-process loader would
  (:func:`epoch_order`); :class:`ShardedEpochSampler`, a ``DistributedSampler``, deals
  position ``i`` of that order to rank ``i mod W``, so the ranks' shares of step ``k``
  are exactly the single-process batch ``k``. Each scan carries a loss weight that makes
  DDP's gradient average equal the mean over the global batch, also for a short last
  batch; the padding the sampler adds weighs 0.
- Evaluation deals whole single-process batches round-robin to the ranks, without
  padding, and :meth:`DistContext.gather_batches` puts the predictions back in loader
  order: every patient once, the same numbers as one process.
- Decisions (best epoch, early stopping) are taken on rank 0 and broadcast; only rank 0
  writes files. Checkpoints hold the unwrapped model, so they do not depend on ``W``.

Dropout is the one thing that cannot match a single process: in a distributed run each
rank reseeds torch's generator from ``(seed, epoch, rank)`` at the start of every epoch
(:meth:`DistContext.seed_epoch`), so ranks draw different masks and a resumed run draws
the same masks as an uninterrupted one with the same ``W``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from ichlib.errors import ConfigError, IchlibError
from ichlib.training.loaders import make_loader

T = TypeVar("T")

#: Batch key of the per-scan loss weights that the distributed training loader adds.
LOSS_WEIGHT_KEY = "loss_weight"
#: Environment variable: seconds a process waits for the others before giving up.
TIMEOUT_ENV = "ICHLIB_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
#: The learning-rate rule: none, since ``batch_size`` is global (see the module docstring).
LR_SCALING = "none"


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands, as ``torchrun`` describes it.

    Attributes:
        rank: Global rank, 0 .. world_size - 1.
        local_rank: Rank on this machine (picks the GPU).
        world_size: Number of processes in the run.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1


def detect_env(environ: dict[str, str] | None = None) -> DistEnv:
    """Read ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (as set by ``torchrun``).

    Args:
        environ: The environment to read (default ``os.environ``).

    Raises:
        ConfigError: If the variables are not integers or do not fit together.
    """
    environ = os.environ if environ is None else environ
    try:
        world = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"RANK, LOCAL_RANK and WORLD_SIZE must be integers ({exc})") from exc
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"inconsistent distributed environment: RANK={rank}, "
                          f"LOCAL_RANK={local}, WORLD_SIZE={world}")
    return DistEnv(rank=rank, local_rank=local, world_size=world)


def is_main_process() -> bool:
    """True unless this is a ``torchrun`` worker other than rank 0 (works before init)."""
    return detect_env().rank == 0


def backend_for(device: torch.device) -> str:
    """The collective backend for ``device``: NCCL on CUDA, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def process_device(device: torch.device, env: DistEnv) -> torch.device:
    """This process's device: on CUDA, GPU ``LOCAL_RANK`` (an index given in ``device`` is
    ignored when there are several processes, so that no two share a GPU)."""
    if device.type == "cuda" and env.world_size > 1:
        return torch.device("cuda", env.local_rank)
    return device


def group_timeout() -> datetime.timedelta:
    """How long a collective waits for a silent peer (``$ICHLIB_DIST_TIMEOUT`` seconds)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError as exc:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from exc
    if seconds <= 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be positive, got {raw!r}")
    return datetime.timedelta(seconds=seconds)


@dataclass
class DistContext:
    """What :func:`ichlib.training.fit.fit` needs to know and do when several processes train.

    The default instance is one inactive process: every method then returns its input
    unchanged or does nothing.

    Attributes:
        env: Rank and world size.
        device: This process's device.
        backend: ``"nccl"``, ``"gloo"`` or None when inactive.
    """

    env: DistEnv = field(default_factory=DistEnv)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when a process group with more than one process is in use."""
        return self.backend is not None and self.env.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one process that prints and writes files."""
        return self.env.rank == 0

    # --- agreement and communication ------------------------------------------------

    def barrier(self) -> None:
        """Wait until every process is here."""
        if self.enabled:
            _collective(torch.distributed.barrier)

    def from_main(self, compute: Callable[[], T]) -> T:
        """Run ``compute`` on rank 0 and give its result to every rank (a plain call when
        inactive). The result travels pickled between the run's own processes."""
        if not self.enabled:
            return compute()
        box = [compute() if self.is_main else None]
        _collective(torch.distributed.broadcast_object_list, box, src=0)
        return box[0]

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on rank 0 first, then on the others (which can reuse its caches)."""
        if not self.is_main:
            self.barrier()
        try:
            yield
        finally:  # also on an error, so the others meet it themselves instead of waiting
            if self.is_main:
                self.barrier()

    def agree_with_main(self, tracker: object, improved: bool) -> bool:
        """Make every rank take rank 0's early-stopping state and best-epoch decision.

        Args:
            tracker: An object with ``state_dict()`` / ``load_state_dict()`` (EarlyStopping).
            improved: This rank's verdict for the epoch.

        Returns:
            Rank 0's verdict.
        """
        if not self.enabled:
            return improved
        improved, state = self.from_main(lambda: (improved, tracker.state_dict()))
        tracker.load_state_dict(state)
        return bool(improved)

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        """Sum a float64 vector over all ranks (returned unchanged when inactive)."""
        if not self.enabled:
            return values
        tensor = torch.as_tensor(np.asarray(values, dtype=np.float64), device=self._comm_device())
        _collective(torch.distributed.all_reduce, tensor)
        return tensor.cpu().numpy()

    def sum_epoch(self, totals: np.ndarray, n_scans: int, n_slices: int) -> tuple[np.ndarray, int, int]:
        """Training statistics summed over ranks: loss totals, scans and slices."""
        if not self.enabled:
            return totals, n_scans, n_slices
        summed = self.all_sum(np.concatenate([totals, [n_scans, n_slices]]))
        return summed[:-2], int(round(summed[-2])), int(round(summed[-1]))

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

        DDP broadcasts them at the start of each forward pass, so after the last training
        step each rank holds its own update; evaluation and checkpoints use rank 0's.
        """
        if not self.enabled:
            return
        for buffer in model.buffers():
            _collective(torch.distributed.broadcast, buffer.data, src=0)

    def gather_batches(self, ids: list[str], arrays: dict[str, list[np.ndarray]],
                       batch_totals: list[np.ndarray]
                       ) -> tuple[list[str], dict[str, list[np.ndarray]], list[np.ndarray]]:
        """Collect every rank's evaluation batches, in single-process loader order.

        Rank ``r`` evaluated batches ``r, r + W, ...`` (see :meth:`eval_loader`). Returns
        the ids, the per-batch arrays and the per-batch loss totals of all batches, as one
        process evaluating the whole split would have them.
        """
        if not self.enabled:
            return ids, arrays, batch_totals
        local = split_batches(ids, arrays, batch_totals, self.env.rank, self.env.world_size)
        everyone: list[list[tuple]] = [[] for _ in range(self.env.world_size)]
        _collective(torch.distributed.all_gather_object, everyone, local)
        return merge_batches([item for part in everyone for item in part], list(arrays))

    # --- model, seeds, loaders --------------------------------------------------------

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (rank 0's weights go to all), or as it is."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Reseed torch's generator (dropout) from ``(seed, epoch, rank)``; no-op inactive."""
        if self.enabled:
            torch.manual_seed(int(np.random.SeedSequence([seed, epoch, self.env.rank])
                                  .generate_state(1, np.uint64)[0] >> 1))

    def check_batch_size(self, batch_size: int) -> None:
        """The global batch must split evenly over the processes.

        Raises:
            ConfigError: If it does not.
        """
        world = self.env.world_size
        if batch_size % world:
            raise ConfigError(f"batch_size {batch_size} is the global batch (scans per step over "
                              f"all processes) and must be a multiple of the {world} processes; "
                              f"try {max(world, batch_size - batch_size % world)}")

    def describe(self, batch_size: int) -> dict:
        """World size and batch sizes, for checkpoints, metrics.json and the log."""
        return {"world_size": self.env.world_size, "backend": self.backend or "none",
                "global_batch_size": int(batch_size),
                "per_process_batch_size": int(batch_size) // self.env.world_size,
                "lr_scaling": LR_SCALING}

    def train_loader(self, dataset: Dataset, batch_size: int, seed: int, epoch: int,
                     num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
        """This rank's share of the epoch (``batch_size`` is global); batches carry
        :data:`LOSS_WEIGHT_KEY`."""
        sampler = ShardedEpochSampler(dataset, batch_size, seed=seed, num_replicas=self.env.world_size,
                                      rank=self.env.rank)
        sampler.set_epoch(epoch)
        batches = BatchSampler(sampler, batch_size // self.env.world_size, drop_last=False)
        return DataLoader(WeightedItems(dataset), batch_sampler=batches, num_workers=num_workers,
                          pin_memory=pin_memory, persistent_workers=False)

    def eval_loader(self, dataset: Dataset, batch_size: int, num_workers: int = 0,
                    pin_memory: bool = False) -> DataLoader:
        """Whole single-process batches ``rank, rank + W, ...`` of ``dataset``, unshuffled."""
        batches = eval_batches(len(dataset), batch_size, self.env.rank, self.env.world_size)
        return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                          pin_memory=pin_memory, persistent_workers=False)

    def build_cache_shard(self, fetch: Callable[[str], object], keys: Sequence[str]) -> None:
        """Call ``fetch`` on this rank's share of ``keys`` (errors are left for later),
        then wait for all ranks, so each cache entry is built once."""
        if not self.enabled:
            return
        for key in list(keys)[self.env.rank::self.env.world_size]:
            with contextlib.suppress(IchlibError):
                fetch(key)
        self.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


#: The inactive context: one process, no process group.
LOCAL = DistContext()


@contextlib.contextmanager
def session(device: torch.device, batch_size: int) -> Iterator[DistContext]:
    """Join the ``torchrun`` process group for the block, if there is one.

    With ``WORLD_SIZE`` above 1 this initialises the process group (unless the caller
    already did) on the backend for ``device``, with :func:`group_timeout`, and destroys
    it at the end if it created it. Otherwise it yields an inactive context (like
    :data:`LOCAL`) on ``device``.

    Raises:
        ConfigError: If the batch does not split over the processes, or this PyTorch has
            no ``torch.distributed``.
    """
    env = detect_env()
    if env.world_size == 1:
        yield DistContext(env=env, device=device)
        return
    if not torch.distributed.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    device = process_device(device, env)
    ctx = DistContext(env=env, device=device, backend=backend_for(device))
    ctx.check_batch_size(batch_size)
    created = not torch.distributed.is_initialized()
    if created:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        try:
            torch.distributed.init_process_group(backend=ctx.backend, timeout=group_timeout())
        except RuntimeError as exc:
            raise IchlibError(f"could not join the {ctx.backend} process group as rank {env.rank} of "
                              f"{env.world_size}: {exc}") from exc
    else:
        ctx.backend = torch.distributed.get_backend()
    try:
        yield ctx
    except RuntimeError as exc:  # a dead peer surfaces in DDP's backward or any collective
        lost = peer_failure(exc)
        if lost is None:
            raise
        raise lost from exc
    finally:
        if created and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# --- samplers and batch bookkeeping ------------------------------------------------------

def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order in which one process trains on ``n`` scans in ``epoch``.

    It is read from :func:`ichlib.training.loaders.make_loader` (``shuffle=True``) over the indices,
    through ``tqdm`` as :func:`ichlib.training.engine.train_one_epoch` reads it: tqdm opens one
    iterator when it is created, and every iterator of a DataLoader draws from the
    loader's generator, so the permutation depends on how the loader is read.
    """
    loader = make_loader(range(n), max(n, 1), shuffle=True, seed=seed, epoch=epoch)
    return [int(i) for batch in tqdm(loader, disable=True) for i in batch]


class ShardedEpochSampler(DistributedSampler):
    """A ``DistributedSampler`` that deals the single-process order to the ranks.

    Position ``i`` of :func:`epoch_order` goes to rank ``i mod W`` (padded, as the parent
    class does, to the same length on every rank). Each item is ``(index, weight)``: the
    weight is ``W / m`` for a scan of a global batch of ``m`` scans and 0 for padding, so
    a rank's weighted mean loss, averaged over ranks by DDP, is the global batch mean.

    Args:
        dataset: The training dataset.
        batch_size: The global batch size (a multiple of ``num_replicas``).
        seed: The run's seed; the order depends on ``(seed, epoch)`` only.
        num_replicas, rank: As for ``DistributedSampler``.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_replicas: int,
                 rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=False)
        if batch_size < 1 or batch_size % num_replicas:
            raise ConfigError(f"batch_size {batch_size} must be a positive multiple of {num_replicas}")
        self.batch_size = int(batch_size)

    def __iter__(self) -> Iterator[tuple[int, float]]:
        n, world = len(self.dataset), self.num_replicas
        order = epoch_order(n, self.seed, self.epoch)
        for position in range(self.rank, self.total_size, world):
            if position >= n:  # padding: a repeated scan that must not count
                yield order[position % n], 0.0
                continue
            first = position - position % self.batch_size
            yield order[position], world / min(self.batch_size, n - first)


class WeightedItems(Dataset):
    """Wraps a dataset of dicts: item ``(index, weight)`` is ``dataset[index]`` plus
    :data:`LOSS_WEIGHT_KEY`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, float]) -> dict:
        index, weight = item
        return {**self.dataset[index], LOSS_WEIGHT_KEY: float(weight)}


def eval_batches(n: int, batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """Batches ``rank, rank + W, ...`` of an unshuffled loader over ``n`` items (may be none)."""
    starts = range(0, n, batch_size)
    return [list(range(s, min(s + batch_size, n))) for s in starts][rank::world_size]


def split_batches(ids: list[str], arrays: dict[str, list[np.ndarray]], batch_totals: list[np.ndarray],
                  rank: int, world_size: int) -> list[tuple[int, list[str], dict[str, np.ndarray], np.ndarray]]:
    """One rank's evaluation output as ``(global batch number, ids, arrays, total)`` items."""
    items, start = [], 0
    for j, total in enumerate(batch_totals):
        size = len(next(iter(arrays.values()))[j])
        items.append((rank + j * world_size, ids[start:start + size],
                      {key: values[j] for key, values in arrays.items()}, total))
        start += size
    if start != len(ids):
        raise IchlibError(f"evaluation bookkeeping: {len(ids)} ids for {start} predictions")
    return items


def merge_batches(items: list[tuple], keys: Sequence[str]
                  ) -> tuple[list[str], dict[str, list[np.ndarray]], list[np.ndarray]]:
    """Inverse of :func:`split_batches` over all ranks: everything in batch order.

    Raises:
        IchlibError: If a batch number is missing or appears twice.
    """
    items = sorted(items, key=lambda item: item[0])
    numbers = [item[0] for item in items]
    if numbers != list(range(len(items))):
        raise IchlibError(f"gathered evaluation batches {numbers} are not 0..{len(items) - 1} once each")
    ids = [pid for item in items for pid in item[1]]
    arrays = {key: [item[2][key] for item in items] for key in keys}
    return ids, arrays, [item[3] for item in items]


#: Words in the errors of gloo, NCCL and the c10d store when a peer is gone or silent.
_PEER_SIGNS = ("gloo", "nccl", "connection reset", "connection closed", "broken pipe",
               "timed out", "timeout", "socket")


def peer_failure(exc: BaseException) -> IchlibError | None:
    """The clear error for ``exc`` if it says another process died or went silent, else None."""
    text = str(exc).strip()
    dist_error = getattr(torch.distributed, "DistError", ())
    if not (isinstance(exc, dist_error) or any(sign in text.lower() for sign in _PEER_SIGNS)):
        return None
    first = text.splitlines()[0] if text else type(exc).__name__
    return IchlibError(f"lost contact with another training process ({first}); the run stops "
                       "here. last.pt holds the last finished epoch: continue with --resume, with "
                       "any number of processes")


def _collective(call: Callable[..., T], *args, **kwargs) -> T:
    """Run a collective; a lost peer becomes the :class:`IchlibError` of :func:`peer_failure`."""
    try:
        return call(*args, **kwargs)
    except RuntimeError as exc:
        lost = peer_failure(exc)
        if lost is None:
            raise
        raise lost from exc
