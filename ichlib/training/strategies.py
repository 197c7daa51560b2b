"""What one epoch of training does, and what the run ends with: end to end, or in two stages.

:func:`ichlib.training.fit.fit` runs the same loop for both (train an epoch, validate, keep
the best, save); a strategy supplies the parts that differ:

- :class:`EndToEnd`, the design: each step runs the CNN and the BiLSTM on ``B`` scans of
  ``S`` slices and optimises ``(1 - λ) scan BCE + λ slice BCE``; the best epoch (by the
  validation ``monitor``) is ``best.pt``.
- :class:`TwoStage`, as the top RSNA 2019 solutions trained: the epochs train the CNN and
  slice head on single slices (:class:`~ichlib.training.two_stage.SliceStage`), selected by
  the validation slice AUC (``stage1.pt``); then the BiLSTM and scan head are trained on
  cached embeddings of the frozen CNN, which gives ``best.pt``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ichlib.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from ichlib.errors import ConfigError
from ichlib.losses import ScanSliceLoss, pos_weight_from_labels
from ichlib.model import CNNBiLSTM
from ichlib.preprocess.augment import ScanAugment
from ichlib.preprocess.dataset import ScanDataset, sequence_labels
from ichlib.preprocess.sampling import uniform_indices
from ichlib.training.config import TrainConfig
from ichlib.training.data import PreparedData
from ichlib.training.distributed import DistContext
from ichlib.training.engine import (
    EpochStats,
    EvalResult,
    make_optimizer,
    steps_per_epoch,
    train_one_epoch,
)
from ichlib.training.loaders import make_train_loader
from ichlib.training.log import RunLog
from ichlib.training.metrics import choose_thresholds, score_predictions
from ichlib.training.two_stage import (
    SequenceStageConfig,
    SliceSampler,
    SliceStage,
    SliceStageConfig,
    covering_logits,
    embed_scans,
    train_sequence_stage,
)

#: Keys of last.pt that a weights-only checkpoint (best.pt) does not carry.
TRAINING_STATE = frozenset({"optimizer", "lr_scheduler", "scaler", "early_stopping", "rng"})


def build_model(config: TrainConfig) -> CNNBiLSTM:
    """The model described by ``config`` (on the CPU, float32): with ``two_stage``,
    ``sequence_members`` sequence halves, end to end one."""
    return CNNBiLSTM(backbone=config.backbone, in_channels=len(config.windows),
                     lstm_hidden=config.lstm_hidden, dropout=config.dropout,
                     pretrained=config.pretrained, pooling=config.pooling,
                     sequence_members=config.sequence_members if config.two_stage else 1)


def warm_start(model: CNNBiLSTM, path: str | Path, config: TrainConfig) -> dict:
    """Load the CNN and slice head of the checkpoint at ``path`` into ``model`` (the
    curriculum of :attr:`TrainConfig.warmup_epochs` and ``init_from``); the sequence half
    keeps its fresh initialisation.

    Returns:
        What was loaded, for metrics.json: the file and its best epoch and score.

    Raises:
        CheckpointError: The file is not a checkpoint.
        ConfigError: Its CNN or preprocessing differs from ``config``'s.
    """
    ckpt = load_checkpoint(path)
    saved = ckpt.get("config", {})
    differs = [f"{k}: {saved.get(k)!r} there, {v!r} here" for k, v in config.to_dict().items()
               if k in ("backbone", "windows", "img_size") and saved.get(k) != v]
    if differs:
        raise ConfigError(f"{path}: cannot warm-start from it ({'; '.join(differs)})")
    cnn = {k: v for k, v in ckpt["model"].items() if k.startswith(("encoder.", "slice_head."))}
    missing = [k for k in model.state_dict() if k.startswith(("encoder.", "slice_head.")) and k not in cnn]
    if missing:
        raise ConfigError(f"{path}: has no weights for {len(missing)} CNN tensors (e.g. {missing[0]})")
    model.load_state_dict(cnn, strict=False)
    return {"from": str(path), "epoch": ckpt.get("epoch"), "monitor": ckpt.get("monitor"),
            "score": ckpt.get("best_score")}


def build_criterion(config: TrainConfig, prepared: PreparedData) -> ScanSliceLoss:
    """The loss with ``λ = config.aux_weight``; with ``pos_weight``, positives weighted by the
    training prevalence (per label, scan and slice level separately)."""
    if not config.pos_weight:
        return ScanSliceLoss(config.aux_weight)
    data, ids = prepared.data, prepared.split["train"]
    scan_y = np.stack([data.scan_labels(pid) for pid in ids])
    slice_y = np.concatenate([data.slice_labels(pid) for pid in ids])
    return ScanSliceLoss(config.aux_weight, pos_weight_from_labels(scan_y), pos_weight_from_labels(slice_y))


class Strategy:
    """What :func:`~ichlib.training.fit.fit` asks of a way to train (see the module docstring).

    Attributes:
        monitor: The validation quantity that picks the best epoch.
        epoch_best: File name of the best epoch's checkpoint.
        optimizer, scheduler, scaler: Training state saved in ``last.pt``.
    """

    name = ""
    epoch_best = "best.pt"

    def __init__(self, config: TrainConfig, prepared: PreparedData, model: CNNBiLSTM,
                 criterion: ScanSliceLoss, device: torch.device, amp_dtype: torch.dtype | None,
                 dist: DistContext, log: RunLog) -> None:
        self.config, self.prepared, self.model, self.criterion = config, prepared, model, criterion
        self.device, self.amp_dtype, self.dist = device, amp_dtype, dist
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    @classmethod
    def check_processes(cls, dist: DistContext) -> None:
        """Refuse a process layout this strategy cannot train on (before any work starts)."""

    def epoch_val_set(self) -> ScanDataset:
        """What validation reads after every epoch (the best epoch is chosen on it)."""
        return self.prepared.val

    def base_rate_loss(self) -> float:
        """The training loss of a model that learned only each label's prevalence in what it
        trains on: a training loss that stays there means "learned nothing"."""
        raise NotImplementedError

    def train_epoch(self, epoch: int, log: RunLog) -> dict[str, float]:
        """Train one epoch; returns its statistics (``loss``, ``seconds``, ``slices_per_s``...)."""
        raise NotImplementedError

    def history_row(self, row: dict, val: EvalResult) -> dict:
        """The epoch's history row, adjusted to what this strategy trains."""
        return row

    def epoch_line(self, epoch: int, stats: dict, val: EvalResult, row: dict) -> str:
        """One printed line per epoch."""
        raise NotImplementedError

    def finish(self, out: Path, log: RunLog) -> tuple[Path, dict]:
        """The checkpoint the run ends with, and what to add to metrics.json's ``training``."""
        best = out / self.epoch_best
        return (best if best.exists() else out / "last.pt"), {}


class EndToEnd(Strategy):
    """The CNN and the BiLSTM trained together, AdamW with a per-step cosine schedule."""

    name = "end to end"

    def __init__(self, config: TrainConfig, prepared: PreparedData, model: CNNBiLSTM,
                 criterion: ScanSliceLoss, device: torch.device, amp_dtype: torch.dtype | None,
                 dist: DistContext, log: RunLog) -> None:
        super().__init__(config, prepared, model, criterion, device, amp_dtype, dist, log)
        self.net = dist.wrap(model)  # DDP under torchrun; checkpoints keep the unwrapped model
        scale = config.cnn_lr_scale
        self.optimizer = make_optimizer(model if scale == 1.0 else _parameter_groups(model, scale), config.lr,
                                        config.weight_decay)
        steps = steps_per_epoch(len(prepared.train), config.batch_size, config.max_train_batches)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer,
                                                                    T_max=max(1, config.epochs * steps))
        self.monitor = _effective_monitor(config, prepared, log)

    def describe(self) -> str:
        """How this strategy trains, for the start line."""
        config = self.config
        warm = ""
        if config.warm_started:
            source = f"{config.warmup_epochs} slice-task epochs" if config.warmup_epochs else config.init_from
            warm = f", CNN warm-started from {source}, CNN lr {config.cnn_lr_scale:g} x lr"
        return f"λ = {config.aux_weight}{warm}"

    def train_epoch(self, epoch: int, log: RunLog) -> dict[str, float]:
        """One pass over the training scans (under ``torchrun`` each process trains on its share
        of every global batch), with the statistics of all processes."""
        config, dist = self.config, self.dist
        loader = make_train_loader(self.prepared.train, config, epoch, self.device.type == "cuda",
                                   dist.world_size, dist.rank)
        dist.seed_epoch(config.seed, epoch)
        stats = train_one_epoch(self.net, self.criterion, self.optimizer, loader, self.device, epoch,
                                self.scheduler, self.amp_dtype, self.scaler, config.max_train_batches, log)
        return EpochStats.merge(dist.gather(stats)).as_dict()

    def base_rate_loss(self) -> float:
        """``(1 − λ)`` times the base-rate BCE of the sequence targets plus ``λ`` times that of
        the slice targets, over jittered samplings of the training scans as training draws them."""
        rng = np.random.default_rng([self.config.seed, 7])
        data, s = self.prepared.data, self.config.seq_len
        slices = [data.slice_labels(pid)[uniform_indices(len(data.slice_labels(pid)), s, True, rng)]
                  for pid in self.prepared.split["train"] for _ in range(4)]
        lam = self.config.aux_weight
        return ((1 - lam) * base_rate_bce(np.stack([sequence_labels(y) for y in slices]))
                + lam * base_rate_bce(np.concatenate(slices)))

    def epoch_line(self, epoch: int, stats: dict, val: EvalResult, row: dict) -> str:
        auc = row["val_mean_auc"]
        # Short enough not to wrap in a notebook (about 95 characters with "*best").
        return (f"epoch {epoch + 1}/{self.config.epochs}  loss {stats['loss']:.3f} "
                f"(base rate {row['train_base_rate_loss']:.3f})  val {val.loss:.3f} "
                f"(scan {val.scan_loss:.3f}), mean AUC {'n/a' if auc is None else f'{auc:.3f}'}  "
                f"{stats['slices_per_s']:.0f} slices/s")


class TwoStage(Strategy):
    """Stage 1, the CNN as a slice classifier, for the epochs; then stage 2, the BiLSTM on
    cached embeddings (see the module docstring). One process only."""

    name = "two stages"
    epoch_best = "stage1.pt"

    def __init__(self, config: TrainConfig, prepared: PreparedData, model: CNNBiLSTM,
                 criterion: ScanSliceLoss, device: torch.device, amp_dtype: torch.dtype | None,
                 dist: DistContext, log: RunLog) -> None:
        self.check_processes(dist)
        super().__init__(config, prepared, model, criterion, device, amp_dtype, dist, log)
        self.stage = _slice_stage(config, prepared, model, device, amp_dtype)
        self.optimizer, self.scheduler = self.stage.optimizer, self.stage.scheduler
        self.monitor = _slice_task_monitor(prepared, log)  # stage 1 is chosen for its embeddings

    @classmethod
    def check_processes(cls, dist: DistContext) -> None:
        if dist.enabled:
            raise ConfigError("two-stage training runs in one process; start it without torchrun")

    def describe(self) -> str:
        return "two stages"

    def train_epoch(self, epoch: int, log: RunLog) -> dict[str, float]:
        return self.stage.train_epoch(epoch, log)

    def history_row(self, row: dict, val: EvalResult) -> dict:
        """Stage 1 optimises the slice loss; the scan head is untrained, so its numbers go."""
        return {**row, "val_loss": val.slice_loss, "val_scan_loss": None, "val_mean_auc": None,
                "val_patient_weighted_log_loss": None}

    def epoch_val_set(self) -> ScanDataset:
        """The ``S`` uniformly sampled slices of each validation scan: stage 1 is chosen on its
        slice head alone (slice AUC), which needs no whole scans (a third of the work per epoch)."""
        return dataclasses.replace(self.prepared.val, all_slices=False)

    def base_rate_loss(self) -> float:
        """The base-rate BCE of the slices stage 1 draws (half with blood, height-matched)."""
        sampler = SliceSampler(self.stage.labels, self.stage.config.positive_fraction,
                               np.random.default_rng([self.config.seed, 7]), self.stage.config.matched_fraction)
        drawn = sampler.draw(4096)
        return base_rate_bce(np.stack([self.stage.labels[pid][k] for pid, k in drawn]))

    def epoch_line(self, epoch: int, stats: dict, val: EvalResult, row: dict) -> str:
        return (f"stage 1 epoch {epoch + 1}/{self.config.epochs}  slice loss {stats['slice_loss']:.3f} "
                f"(base rate {row['train_base_rate_loss']:.3f})  val {val.slice_loss:.3f}, "
                f"slice AUC {_or_na(row.get('val_slice_mean_auc'))}  {stats['slices_per_s']:.0f} slices/s")

    def finish(self, out: Path, log: RunLog) -> tuple[Path, dict]:
        """Stage 2 from the best stage-1 epoch; writes and returns ``best.pt``."""
        stage1, _ = super().finish(out, log)
        best = out / "best.pt"
        return best, {"sequence_stage": _run_sequence_stage(self.config, self.prepared, stage1, best,
                                                           self.device, self.amp_dtype, log)}


def _run_sequence_stage(config: TrainConfig, prepared: PreparedData, stage1_path: Path, best_path: Path,
                       device: torch.device, amp_dtype: torch.dtype | None, log: RunLog) -> dict:
    """Stage 2 of ``two_stage``: embed the training and validation scans with the stage-1
    CNN, then :func:`sequence_stage_on_embeddings`.

    Returns:
        Its summary, with ``embed_seconds``.
    """
    model, _ = model_from_checkpoint(load_checkpoint(stage1_path), device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    ids = prepared.split["train"] + prepared.split["val"]
    everyone = ScanDataset(prepared.data, ids, config.preprocess, prepared.cache_dir)
    embeddings = embed_scans(model, everyone, device, amp_dtype, log=log)
    embed_seconds = time.perf_counter() - start
    log.info(f"Stage 2: embedded {len(ids)} scans in {embed_seconds:.1f} s")
    summary = sequence_stage_on_embeddings(config, prepared, stage1_path, best_path, embeddings,
                                           device, amp_dtype, log)
    return {**summary, "embed_seconds": embed_seconds}


def sequence_stage_on_embeddings(config: TrainConfig, prepared: PreparedData, stage1_path: Path,
                                 best_path: Path, embeddings: dict[str, torch.Tensor],
                                 device: torch.device, amp_dtype: torch.dtype | None,
                                 log: RunLog) -> dict:
    """Train the sequence half on slice embeddings of the training and validation scans and
    save the result.

    The embeddings may come from the stage-1 CNN itself (:class:`TwoStage`) or, in a
    cross-validation, from the CNNs of the folds that did not train on each patient
    (:mod:`ichlib.training.cv`). Writes ``best_path``: the stage-1 checkpoint with the new
    sequence weights and thresholds chosen on validation.

    Returns:
        A summary for metrics.json: per member (``members``) the epochs run, best epoch,
        validation scan loss and mean AUC, and per-epoch losses; the whole model's
        validation scan loss and mean AUC; training seconds (``embed_seconds`` 0: the caller
        measures the embedding). ``epochs_run``, ``best_epoch`` and ``history`` are member 0's.
    """
    ckpt = load_checkpoint(stage1_path)
    model, _ = model_from_checkpoint(ckpt, device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ids = prepared.split["train"] + prepared.split["val"]
    criterion = build_criterion(config, prepared)
    stage = SequenceStageConfig(epochs=config.sequence_epochs, batch_size=max(config.batch_size, 8),
                                patience=config.sequence_patience, seed=config.seed)
    val_ids = prepared.split["val"]
    val_y = np.stack([prepared.data.scan_labels(pid) for pid in val_ids])
    scan_labels = {pid: prepared.data.scan_labels(pid) for pid in ids}
    slice_labels = {pid: prepared.data.slice_labels(pid) for pid in ids}
    members = []
    for member in range(model.sequence_members):
        result = train_sequence_stage(
            model, embeddings, scan_labels, prepared.split["train"], val_ids, config.seq_len, stage, device,
            pos_weight=criterion.scan_pos_weight, log=log, slice_labels=slice_labels, member=member)
        members.append({"member": member, "epochs_run": len(result.history), "best_epoch": result.best_epoch,
                        "best_val_scan_loss": result.best_val_scan_loss,
                        "val_mean_auc": _val_mean_auc(model, embeddings, val_ids, val_y, config.seq_len, device, member),
                        "seconds": result.seconds, "history": result.history})
    # the validation scans as prediction reads them (every slice), from the cached embeddings:
    # the same numbers as evaluate() in float32, without running the CNN over them again
    with torch.inference_mode():
        val_logits = covering_logits(model, embeddings, val_ids, config.seq_len, device)
    val_probs = torch.sigmoid(val_logits).cpu().numpy()
    val_loss = F.binary_cross_entropy_with_logits(
        val_logits, torch.as_tensor(val_y, dtype=torch.float32, device=val_logits.device),
        pos_weight=None if criterion.scan_pos_weight is None else criterion.scan_pos_weight.to(val_logits.device)).item()
    thresholds, _ = choose_thresholds(val_y, val_probs)
    save_checkpoint(best_path, {**{k: v for k, v in ckpt.items() if k not in TRAINING_STATE},
                                "model": model.state_dict(), "thresholds": thresholds,
                                "stage": "two-stage", "best_score": val_loss})
    summary = _sequence_stage_summary(members, val_loss, score_predictions(val_y, val_probs, n_boot=0)["mean_auc"], log)
    return {**summary, "embed_seconds": 0.0}


def _val_mean_auc(model: CNNBiLSTM, embeddings: dict[str, torch.Tensor], val_ids: list[str], val_y: np.ndarray,
                  seq_len: int, device: torch.device, member: int | None) -> float | None:
    """Mean AUC over the labels on the validation scans (every slice) of one member or all."""
    with torch.inference_mode():
        probs = torch.sigmoid(covering_logits(model, embeddings, val_ids, seq_len, device, member)).cpu().numpy()
    return score_predictions(val_y, probs, n_boot=0)["mean_auc"]


def _sequence_stage_summary(members: list[dict], val_loss: float, val_auc: float | None, log: RunLog) -> dict:
    """metrics.json's ``sequence_stage`` and the log lines of stage 2."""
    seconds = sum(m["seconds"] for m in members)
    for m in members:
        name = f"Stage 2 member {m['member'] + 1}" if len(members) > 1 else "Stage 2"
        log.info(f"{name}: trained the BiLSTM "
                 f"for {m['epochs_run']} epochs in {m['seconds']:.1f} s (best epoch {m['best_epoch']}, "
                 f"val scan loss {m['best_val_scan_loss']:.4f}, val mean AUC {_or_na(m['val_mean_auc'])})")
    if len(members) > 1:
        log.info(f"Stage 2: the mean of the {len(members)} members' probabilities: val scan loss "
                 f"{val_loss:.4f}, val mean AUC {_or_na(val_auc)} ({seconds:.1f} s in all)")
    first = members[0]
    return {"epochs_run": first["epochs_run"], "best_epoch": first["best_epoch"], "history": first["history"],
            "members": members, "best_val_scan_loss": val_loss, "val_mean_auc": val_auc,
            "train_seconds": seconds}


def _slice_stage(config: TrainConfig, prepared: PreparedData, model: CNNBiLSTM, device: torch.device,
                 amp_dtype: torch.dtype | None) -> SliceStage:
    """Stage 1 with the end-to-end budget: ``n_train x S`` slices per epoch."""
    stage = SliceStageConfig(epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay,
                             seed=config.seed, matched_fraction=config.matched_fraction)
    steps = max(1, math.ceil(len(prepared.train) * config.seq_len / stage.batch_size))
    if config.max_train_batches is not None:
        steps = min(steps, config.max_train_batches)
    weight = None
    if config.pos_weight:
        slice_y = np.concatenate([prepared.data.slice_labels(pid) for pid in prepared.split["train"]])
        weight = pos_weight_from_labels(slice_y)
    return SliceStage(model, prepared.train, stage, steps, device, amp_dtype,
                      ScanAugment() if config.augment else None, weight)


def base_rate_bce(labels: np.ndarray) -> float:
    """Mean BCE over the rows and labels of ``labels [N, 6]`` when every row is predicted as
    its label's prevalence: the loss of a model that learned the base rate and nothing else."""
    p = np.clip(np.asarray(labels, dtype=np.float64).mean(axis=0), 1e-7, 1 - 1e-7)
    return float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))


def _parameter_groups(model: CNNBiLSTM, cnn_lr_scale: float) -> list[dict]:
    """AdamW parameter groups: everything but the CNN at ``lr`` (first, so the logged lr is
    the heads'), the CNN at ``cnn_lr_scale x lr``."""
    cnn = list(model.encoder.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in cnn)]
    return [{"params": rest}, {"params": cnn, "lr_scale": cnn_lr_scale}]


def _or_na(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _slice_task_monitor(prepared: PreparedData, log: RunLog) -> str:
    """Stage 1 keeps the epoch whose slice head ranks the validation slices best (mean slice
    AUC over the labels): a rank measure that, unlike the slice loss, does not tie between
    epochs whose calibration differs (measured on 2026-12-07, seed 0: the slice loss tied at
    epochs 3 and 5 of 6 and kept epoch 3). Without a validation slice with blood it is
    undefined, and the slice loss picks the epoch."""
    if any(prepared.data.slice_labels(pid)[:, 0].max() > 0.5 for pid in prepared.split["val"]):
        return "slice_mean_auc"
    log.info("No validation slice shows blood, so the slice AUC is undefined; stage 1 keeps the "
             "epoch with the lowest validation slice loss.")
    return "slice_loss"


def _effective_monitor(config: TrainConfig, prepared: PreparedData, log: RunLog) -> str:
    if config.monitor != "mean_auc":
        return config.monitor
    y = np.stack([prepared.data.scan_labels(pid) for pid in prepared.split["val"]])
    if not ((y > 0.5).any(axis=0) & (y <= 0.5).any(axis=0)).any():
        log.info("No label has both classes in validation, so mean AUC is undefined; "
                 "monitoring scan_loss instead.")
        return "scan_loss"
    return "mean_auc"
