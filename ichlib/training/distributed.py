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
- The loaders (:mod:`ichlib.training.loaders`, given this process's :attr:`DistContext.rank`
  and :attr:`DistContext.world_size`) deal every epoch in the order one process trains in,
  with loss weights that make DDP's gradient average the mean over the global batch, and
  deal evaluation batches round-robin without padding.
- :func:`ichlib.training.engine.train_one_epoch` and :func:`~ichlib.training.engine.evaluate`
  know nothing of processes: each process's result is combined through the one reduction,
  :meth:`DistContext.gather` (:meth:`EpochStats.merge <ichlib.training.engine.EpochStats.merge>`
  and :func:`merge_eval_shards`), so validation and test see every patient once, with the
  numbers of one process.
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

from ichlib.errors import ConfigError, IchlibError
from ichlib.preprocess.dataset import ScanDataset
from ichlib.training.config import TrainConfig
from ichlib.training.engine import EvalResult, concat_slices, eval_result, evaluate
from ichlib.training.loaders import make_eval_loader
from ichlib.training.log import QUIET, RunLog

T = TypeVar("T")

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

    @property
    def rank(self) -> int:
        """This process's rank (0 when inactive)."""
        return self.env.rank if self.enabled else 0

    @property
    def world_size(self) -> int:
        """The number of processes that share the work (1 when inactive)."""
        return self.env.world_size if self.enabled else 1

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

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order: the one reduction of a run (``[value]`` when
        inactive). Values travel pickled between the run's own processes."""
        if not self.enabled:
            return [value]
        everyone: list = [None] * self.env.world_size
        _collective(torch.distributed.all_gather_object, everyone, value)
        return everyone

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

        DDP broadcasts them at the start of each forward pass, so after the last training
        step each rank holds its own update; evaluation and checkpoints use rank 0's.
        """
        if not self.enabled:
            return
        for buffer in model.buffers():
            _collective(torch.distributed.broadcast, buffer.data, src=0)

    # --- model and seeds ------------------------------------------------------------

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


# --- evaluation over the processes -------------------------------------------------------

def evaluate_split(dist: DistContext, model: nn.Module, criterion: nn.Module, dataset: ScanDataset,
                   config: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None = None,
                   log: RunLog = QUIET, desc: str = "eval") -> EvalResult:
    """:func:`~ichlib.training.engine.evaluate` on all of ``dataset``: each rank predicts its
    batches (:func:`~ichlib.training.loaders.make_eval_loader`) and every rank gets the whole
    split's result, equal to one process's."""
    loader = make_eval_loader(dataset, config, device.type == "cuda", dist.world_size, dist.rank)
    local = evaluate(model, criterion, loader, device, amp_dtype, log, desc=desc) if len(loader) else None
    # only the last ranks can be without a batch (fewer batches than ranks: one batch each)
    return merge_eval_shards([shard for shard in dist.gather(local) if shard is not None])


def merge_eval_shards(shards: Sequence[EvalResult]) -> EvalResult:
    """One result from the ranks' results, rank ``r`` having evaluated batches ``r, r + W, ...``
    of the split (the ranks without a batch left out): the scans in loader order, the losses
    added batch by batch as one process adds them.

    Raises:
        ConfigError: If there is nothing to merge.
    """
    if len(shards) <= 1:
        if not shards:
            raise ConfigError("nothing to evaluate: the split is empty")
        return shards[0]
    world, pieces = len(shards), []
    for rank, shard in enumerate(shards):
        starts = np.concatenate([[0], np.cumsum(shard.batch_sizes)])
        pieces += [(j * world + rank, shard, slice(starts[j], starts[j + 1]))
                   for j in range(len(shard.batch_sizes))]
    pieces.sort(key=lambda piece: piece[0])
    if [piece[0] for piece in pieces] != list(range(len(pieces))):
        raise IchlibError(f"gathered evaluation batches {[p[0] for p in pieces]} are not 0..{len(pieces) - 1}")
    fields = ("scan_probs", "scan_labels", "slice_probs", "slice_labels", "slice_indices")
    arrays = {k: concat_slices([getattr(s, k)[rows] for _, s, rows in pieces]) for k in fields}
    other = {k: concat_slices([s.other_combines[k][rows] for _, s, rows in pieces])
             for k in shards[0].other_combines}
    ids = [pid for _, s, rows in pieces for pid in s.patient_ids[rows]]
    sizes = np.array([s.batch_sizes[j // world] for j, s, _ in pieces], dtype=np.int64)
    return eval_result(ids, arrays, other, sizes, np.stack([s.batch_losses[j // world] for j, s, _ in pieces]))


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
