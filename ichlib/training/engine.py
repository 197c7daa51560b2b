"""The training loop's parts, in the shape of torchvision's classification reference:
seeds and determinism, the optimizer and its one step function, early stopping,
:func:`train_one_epoch` and :func:`evaluate`.

Neither loop knows how many processes train: each reads the loader it is given (the
loaders are made in :mod:`ichlib.training.loaders`) and returns what it saw, as sums
(:class:`EpochStats`) or per-batch bookkeeping (:class:`EvalResult`) that the caller
combines over processes (:mod:`ichlib.training.distributed`)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from ichlib.device import autocast
from ichlib.errors import ConfigError, IchlibError
from ichlib.losses import LOSS_WEIGHT_KEY, LossParts, ScanSliceLoss
from ichlib.model import CNNBiLSTM, ModelOutput
from ichlib.training.log import QUIET, RunLog
from ichlib.training.metrics import flatten_slices

#: What the validation monitor can be, and whether lower is better.
MONITORS: dict[str, bool] = {"scan_loss": True, "loss": True, "slice_loss": True, "mean_auc": False,
                             "slice_mean_auc": False}


@dataclass
class EvalResult:
    """Predictions of :func:`evaluate` on one split, in loader order.

    Attributes:
        patient_ids: ``[N]``.
        scan_probs: ``[N, 6]`` patient-level probabilities; columns as LABELS.
        scan_labels: ``[N, 6]``.
        slice_probs: ``[N, S, 6]`` slice-head probabilities at the sampled slices.
        slice_labels: ``[N, S, 6]``.
        slice_indices: ``[N, S]`` 0-based slice indices (SliceNumber - 1).
        loss, scan_loss, slice_loss: Mean losses over scans.
        other_combines: For whole-scan evaluation, ``{"mean", "one"}``: ``[N, 6]`` scan
            probabilities from the mean over the samplings, and from the first sampling
            alone, beside ``scan_probs`` (their maximum).
        batch_sizes: ``[n_batches]`` scans per loader batch, in order.
        batch_losses: ``[n_batches, 3]`` each batch's summed ``loss``, ``scan_loss`` and
            ``slice_loss`` (its size times its means): the losses above are their sum over
            ``N``, so results of several loaders can be merged exactly.
    """

    patient_ids: list[str]
    scan_probs: np.ndarray
    scan_labels: np.ndarray
    slice_probs: np.ndarray
    slice_labels: np.ndarray
    slice_indices: np.ndarray
    loss: float
    scan_loss: float
    slice_loss: float
    other_combines: dict[str, np.ndarray] = field(default_factory=dict)
    batch_sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    batch_losses: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))

    def slice_rows(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Flattened slice-level ``(labels, probs, patient per row)``, each slice once."""
        return flatten_slices(self.slice_labels, self.slice_probs, self.patient_ids, self.slice_indices)


@dataclass
class EarlyStopping:
    """Tracks the best validation score, and stops after ``patience`` epochs without a better one.

    Attributes:
        monitor: A key of :data:`MONITORS` (losses: lower is better; AUC: higher).
        patience: Epochs without strict improvement before stopping; None never stops.
        best_score, best_epoch: The best so far (epochs counted from 1).
        since_best: Epochs since the best one.
        stopped: Whether training should stop.
    """

    monitor: str = "scan_loss"
    patience: int | None = None
    best_score: float | None = None
    best_epoch: int | None = None
    since_best: int = 0
    stopped: bool = False

    def update(self, score: float | None, epoch: int) -> bool:
        """Record the score of ``epoch``; returns True if it is the new best.

        A score can be undefined (None: e.g. an AUC on validation slices without blood). The
        first epoch is kept even then, so a run always has a best checkpoint; any epoch with
        a score replaces it.
        """
        lower_is_better = MONITORS[self.monitor]
        improved = self.best_epoch is None or (score is not None and (self.best_score is None or (
            score < self.best_score if lower_is_better else score > self.best_score)))
        if improved:
            self.best_score = None if score is None else float(score)
            self.best_epoch, self.since_best = int(epoch), 0
        else:
            self.since_best += 1
        if self.patience is not None and self.since_best >= self.patience:
            self.stopped = True
        return improved

    def state_dict(self) -> dict:
        """Plain-dict state (for checkpoints and metrics.json)."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict`."""
        for key, value in state.items():
            setattr(self, key, value)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_mode(enabled: bool = True) -> Iterator[None]:
    """Use deterministic kernels inside the block and restore the previous settings after."""
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[2:]


@dataclass
class EpochStats:
    """What one training pass saw, as sums that add up over loaders read side by side
    (the processes of one epoch, :meth:`merge`).

    Attributes:
        loss_sums: ``[3]`` ``loss``, ``scan_loss`` and ``slice_loss`` summed over the scans
            (each batch's size times its means).
        scans, slices: Scans and slices trained on (loss weight 0, padding, does not count).
        seconds: Wall time of the pass.
    """

    loss_sums: np.ndarray = field(default_factory=lambda: np.zeros(3))
    scans: int = 0
    slices: int = 0
    seconds: float = 0.0

    def add(self, parts: LossParts, scans: int, seq_len: int, weight: torch.Tensor | None = None) -> None:
        """Count a batch of ``scans`` scans of ``seq_len`` slices whose loss is ``parts``.

        A batch with loss weights (a weighted sum, see :mod:`ichlib.losses`) counts its scans
        of nonzero weight, each at the batch's weighted mean.
        """
        values = np.array([parts.total.item(), parts.scan.item(), parts.slice.item()])
        if weight is not None:
            total_weight = float(weight.sum())
            scans = int((weight > 0).sum())
            values = values / total_weight if total_weight > 0 else np.zeros(3)
        self.loss_sums += scans * values
        self.scans += scans
        self.slices += scans * seq_len

    @property
    def loss(self) -> float:
        """Mean loss over the scans."""
        return float(self.loss_sums[0] / max(self.scans, 1))

    @property
    def scan_loss(self) -> float:
        """Mean scan-level BCE over the scans."""
        return float(self.loss_sums[1] / max(self.scans, 1))

    @property
    def slice_loss(self) -> float:
        """Mean slice-level BCE over the scans."""
        return float(self.loss_sums[2] / max(self.scans, 1))

    @property
    def slices_per_s(self) -> float:
        """Training throughput."""
        return self.slices / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict[str, float]:
        """``loss``, ``scan_loss``, ``slice_loss``, ``seconds`` and ``slices_per_s`` (a history row's)."""
        return {"loss": self.loss, "scan_loss": self.scan_loss, "slice_loss": self.slice_loss,
                "seconds": self.seconds, "slices_per_s": self.slices_per_s}

    @classmethod
    def merge(cls, parts: Sequence[EpochStats]) -> EpochStats:
        """The statistics of passes read side by side: sums add up; seconds is the longest."""
        return cls(loss_sums=sum((p.loss_sums for p in parts), np.zeros(3)),
                   scans=sum(p.scans for p in parts), slices=sum(p.slices for p in parts),
                   seconds=max(p.seconds for p in parts))


def train_one_epoch(model: CNNBiLSTM, criterion: ScanSliceLoss, optimizer: torch.optim.Optimizer,
                    loader: DataLoader, device: torch.device, epoch: int,
                    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    amp_dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
                    max_batches: int | None = None, log: RunLog = QUIET) -> EpochStats:
    """Train for one pass over ``loader``; the scheduler steps after every batch.

    A batch may carry per-scan loss weights (:data:`~ichlib.losses.LOSS_WEIGHT_KEY`); they
    go to ``criterion`` as its fourth argument.

    Returns:
        :class:`EpochStats` of the pass (``stats.loss``, ``stats.slices_per_s``, ...).

    Raises:
        IchlibError: On a non-finite loss (naming the epoch and batch).
    """
    model.train()
    stats = EpochStats()
    start = time.perf_counter()
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    bar = log.bar(loader, total=n_batches, desc=f"epoch {epoch + 1} train")
    for i, batch in enumerate(bar):
        if i >= n_batches:
            break
        x = batch["x"].to(device, non_blocking=True)
        scan_y = batch["scan_labels"].to(device, non_blocking=True)
        slice_y = batch["slice_labels"].to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            output = model(x)
        weight = batch.get(LOSS_WEIGHT_KEY)
        parts = criterion(output, scan_y, slice_y, weight)
        optimizer_step(parts.total, optimizer, scaler, lr_scheduler,
                       where=f"at epoch {epoch + 1}, batch {i + 1} (patients "
                             f"{', '.join(batch['patient_id'])})")
        stats.add(parts, x.shape[0], x.shape[1], weight)
        bar.set_postfix(loss=f"{stats.loss:.4f}")
    stats.seconds = time.perf_counter() - start
    return stats


def evaluate(model: CNNBiLSTM, criterion: ScanSliceLoss, loader: DataLoader, device: torch.device,
             amp_dtype: torch.dtype | None = None, log: RunLog = QUIET, desc: str = "eval") -> EvalResult:
    """Predict every scan of ``loader`` under ``torch.inference_mode()``.

    Batches of whole scans (``ScanDataset(all_slices=True)``, one scan per batch) are
    predicted from all their slices (:func:`predict_batch`); their slice arrays are padded
    to the longest scan by repeating its last slice (:func:`concat_slices`).

    Returns:
        :class:`EvalResult` with probabilities per patient and per sampled slice, and the
        mean losses.

    Raises:
        ConfigError: If ``loader`` is empty.
    """
    model.eval()
    ids: list[str] = []
    # named as EvalResult's fields; combines: the other combines of whole scans
    arrays: dict[str, list[np.ndarray]] = {k: [] for k in ("scan_probs", "scan_labels", "slice_probs",
                                                           "slice_labels", "slice_indices")}
    combines: dict[str, list[np.ndarray]] = {}
    batch_losses: list[np.ndarray] = []
    with torch.inference_mode():
        for batch in log.bar(loader, desc=desc):
            x = batch["x"].to(device, non_blocking=True)
            scan_y = batch["scan_labels"].to(device)
            slice_y = batch["slice_labels"].to(device)
            with autocast(device, amp_dtype):
                output = predict_batch(model, batch, x, combines)
            parts = criterion(output, scan_y, slice_y)
            batch_losses.append(x.shape[0] * np.array([parts.total.item(), parts.scan.item(),
                                                       parts.slice.item()]))
            ids += list(batch["patient_id"])
            arrays["scan_probs"].append(torch.sigmoid(output.scan_logits.float()).cpu().numpy())
            arrays["slice_probs"].append(torch.sigmoid(output.slice_logits.float()).cpu().numpy())
            for key in ("scan_labels", "slice_labels", "slice_indices"):
                arrays[key].append(batch[key].numpy())
    if not ids:
        raise ConfigError(f"nothing to evaluate: the {desc} loader is empty")
    other = {k: concat_slices(v) for k, v in combines.items() if len(v) == len(arrays["scan_probs"])}
    sizes = np.array([len(p) for p in arrays["scan_probs"]], dtype=np.int64)
    return eval_result(ids, {k: concat_slices(v) for k, v in arrays.items()}, other, sizes, np.stack(batch_losses))


def eval_result(patient_ids: list[str], arrays: dict[str, np.ndarray], other_combines: dict[str, np.ndarray],
                batch_sizes: np.ndarray, batch_losses: np.ndarray) -> EvalResult:
    """An :class:`EvalResult` from its arrays (named as its fields) and per-batch bookkeeping;
    the mean losses are the batches' sums added in order, over the scans."""
    totals = np.zeros(3)
    for batch_total in batch_losses:  # in loader order, one batch at a time
        totals += batch_total
    mean = totals / len(patient_ids)
    return EvalResult(patient_ids=patient_ids, **arrays, loss=float(mean[0]), scan_loss=float(mean[1]),
                      slice_loss=float(mean[2]), other_combines=other_combines,
                      batch_sizes=batch_sizes, batch_losses=batch_losses)


def make_optimizer(model: torch.nn.Module | Iterable[torch.nn.Parameter] | list[dict], lr: float = 1e-3,
                   weight_decay: float = 1e-4) -> torch.optim.AdamW:
    """AdamW over a model's parameters (or a list of parameters, or of parameter groups
    whose ``lr_scale`` multiplies ``lr``), fused where PyTorch supports it (the same update
    as the per-parameter loop, in one kernel)."""
    params = list(model.parameters() if isinstance(model, torch.nn.Module) else model)
    if params and isinstance(params[0], dict):
        params = [{"params": g["params"], "lr": lr * g.get("lr_scale", 1.0)} for g in params]
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # device or PyTorch without a fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None = None,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, *,
                   where: str = "") -> None:
    """One optimizer step, the same in every training loop of ichlib.

    Refuses a non-finite loss before anything changes, then zeroes the gradients, runs the
    backward pass (scaled when ``scaler`` is enabled, for fp16), steps the optimizer and
    the scheduler.

    Raises:
        IchlibError: On a NaN or infinite loss, saying ``where`` it happened.
    """
    if not torch.isfinite(loss.detach()).all():
        place = f" {where}" if where else ""
        raise IchlibError(f"non-finite training loss{place}; lower the learning rate or turn amp off")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    if scheduler is not None:
        scheduler.step()


def steps_per_epoch(n_train: int, batch_size: int, max_train_batches: int | None = None) -> int:
    """Optimizer steps in one epoch."""
    steps = math.ceil(n_train / batch_size)
    return steps if max_train_batches is None else min(steps, max_train_batches)


def predict_batch(model: CNNBiLSTM, batch: dict, x: torch.Tensor,
                  other_combines: dict[str, list[np.ndarray]] | None = None) -> ModelOutput:
    """The model's output for a batch: ``model(x)``, or for a whole-scan batch (one scan
    with ``samplings``, see :class:`~ichlib.preprocess.dataset.ScanDataset`) ``model.forward_scan``
    (the largest logit over the samplings).

    With ``other_combines``, a whole scan's probabilities combined another way are appended
    to it as well: ``"mean"`` over the samplings and ``"one"`` (the first sampling alone),
    the checks that a score does not merely follow the number of samplings (scan length).
    """
    if "samplings" not in batch:
        return model(x)
    if x.shape[0] != 1:
        raise ConfigError(f"whole-scan batches hold one scan, got {x.shape[0]}")
    if other_combines is None:
        return model.forward_scan(x[0], batch["samplings"][0].to(x.device))
    out = model.forward_scan(x[0], batch["samplings"][0].to(x.device), combine="all")
    per_sampling = out.scan_logits[0].float()
    other_combines.setdefault("mean", []).append(torch.sigmoid(per_sampling.mean(dim=0))[None].cpu().numpy())
    other_combines.setdefault("one", []).append(torch.sigmoid(per_sampling[0])[None].cpu().numpy())
    return ModelOutput(scan_logits=per_sampling.amax(dim=0)[None], slice_logits=out.slice_logits)


def concat_slices(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate per-batch arrays along the scans; arrays with a slice axis (``[B, N, ...]``)
    whose ``N`` differs are padded to the longest by repeating each scan's last slice, so a
    padded slice carries its slice index again (counted once by
    :func:`~ichlib.training.metrics.flatten_slices`)."""
    if not parts or parts[0].ndim < 2 or len({p.shape[1] for p in parts}) == 1:
        return np.concatenate(parts)
    longest = max(p.shape[1] for p in parts)
    padded = [np.concatenate([p, np.repeat(p[:, -1:], longest - p.shape[1], axis=1)], axis=1)
              for p in parts]
    return np.concatenate(padded)
