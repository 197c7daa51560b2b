"""A whole training run, in the shape of torchvision's ``references/classification/train.py``.

:func:`fit` runs an experiment from a :class:`~ichlib.training.config.TrainConfig`:

1. read and validate the dataset folder, build the resized-volume cache, and split the
   patients into train / validation / test (:func:`~ichlib.training.data.prepare_data`);
2. train for ``epochs`` (:mod:`ichlib.training.strategies`: end to end, or stage 1 of two
   stages), evaluating on validation after every epoch; validation picks the best epoch
   (and early stopping);
3. finish the strategy (two stages: train the BiLSTM on cached embeddings), then evaluate
   the best weights once on the held-out test patients, which are used for nothing else,
   beside the intensity baseline on the same patients
   (:func:`~ichlib.training.evaluation.final_evaluation`).

Files in ``out_dir``: ``last.pt`` (full training state, every epoch), ``best.pt`` (the
model to use, with everything :mod:`ichlib.predict` needs), ``history.csv`` and
``metrics.json``; two-stage runs also keep ``stage1.pt``. All are written atomically. The
folder is locked for the run and never mixes two runs (:mod:`ichlib.training.runfolder`).
Results on the synthetic phantom are labelled ``"data": "synthetic"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ichlib.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from ichlib.device import describe_precision, resolve_amp, resolve_device
from ichlib.errors import ConfigError, IchlibError, RunInterrupted
from ichlib.io.atomic import atomic_write_text
from ichlib.io.cachedir import default_cache_dir
from ichlib.io.folder import is_synthetic
from ichlib.training.config import RESUME_FREE, TrainConfig
from ichlib.training.data import PreparedData, prepare_data, read_data, volume_cache
from ichlib.training.distributed import (
    DistContext,
    detect_env,
    evaluate_split,
    is_main_process,
    session,
)
from ichlib.training.engine import EarlyStopping, deterministic_mode, seed_everything
from ichlib.training.evaluation import final_evaluation, json_safe
from ichlib.training.log import RunLog
from ichlib.training.metrics import choose_thresholds, score_predictions
from ichlib.training.results import RunMetrics
from ichlib.training.runfolder import RunProgress, run_folder
from ichlib.training.strategies import (
    EndToEnd,
    Strategy,
    TwoStage,
    build_criterion,
    build_model,
    warm_start,
)

#: The keys a resumable ``last.pt`` must have.
_RESUMABLE = ("optimizer", "lr_scheduler", "early_stopping", "rng", "history")


@dataclass
class FitResult:
    """What :func:`fit` produced.

    Attributes:
        out_dir: The run folder.
        history: One row per epoch (losses, validation metrics, learning rate, time).
        metrics: The content of ``metrics.json``.
        split: ``{"train", "val", "test"}`` patient ids.
        best_path, last_path, history_path, metrics_path: The files written.
    """

    out_dir: Path
    history: pd.DataFrame
    metrics: dict
    split: dict[str, list[str]]
    best_path: Path
    last_path: Path
    history_path: Path
    metrics_path: Path

    @property
    def scores(self) -> RunMetrics:
        """``metrics`` by attribute (:class:`~ichlib.training.results.RunMetrics`), e.g.
        ``run.scores.test.auc("any")``.

        Raises:
            ConfigError: For a run stopped after its epochs (``epochs_only``), which has no
                test scores.
        """
        return RunMetrics.from_dict(self.metrics)


def fit(config: TrainConfig, resume: bool = False, log: RunLog | None = None,
        on_epoch_end: Callable[[int, dict], None] | None = None, epochs_only: bool = False,
        existing: str = "clear") -> FitResult:
    """Train, select on validation, test once; write the run folder.

    The run holds ``out_dir`` for itself (:func:`~ichlib.training.runfolder.run_folder`): a
    second run into it fails at once, naming this one.

    Args:
        config: The run's settings.
        resume: Continue from ``out_dir/last.pt`` if it exists (model, optimizer,
            scheduler, epoch, RNG states, history, best score); a finished run is only
            evaluated again. The saved config must match except for paths, workers,
            device and progress.
        log: Where progress goes (default: :class:`~ichlib.training.log.RunLog` with
            ``config.progress``).
        on_epoch_end: Called as ``on_epoch_end(epochs_done, history_row)`` after each
            epoch's files are written (raising there stops the run).
        epochs_only: Stop after the epochs (no stage 2, no test, no ``metrics.json``):
            a cross-validated two-stage run trains every fold's stage 1 first
            (:mod:`ichlib.training.cv`).
        existing: Without ``resume``, what to do with a folder holding an older run:
            ``"clear"`` its files (with a :class:`~ichlib.training.runfolder.RunFolderWarning`)
            or ``"refuse"`` it (what ``ichlib train`` does unless ``--overwrite``).

    Returns:
        :class:`FitResult`.

    Raises:
        RunInterrupted: On Ctrl-C, saying what was saved (a ``KeyboardInterrupt``).
        IchlibError: The folder is in use, or holds an older run and ``existing="refuse"``.
    """
    cache_dir = config.cache_dir or default_cache_dir()
    with run_folder(config.out_dir, config.epochs, resume, existing, is_main_process(),
                    cache_dir) as progress:
        try:
            start_from = _warm_up(config, resume, log) if config.warmup_epochs else config.init_from
            return _fit(config, resume, log, on_epoch_end, progress, epochs_only, start_from)
        except KeyboardInterrupt:
            raise RunInterrupted(progress.interrupted_message()) from None


def _warm_up(config: TrainConfig, resume: bool, log: RunLog | None) -> Path:
    """The curriculum's first part: the slice task for ``warmup_epochs`` in ``OUT/warmup``
    (stage 1 of a two-stage run, resumable on its own); returns its best ``stage1.pt``."""
    if detect_env().world_size > 1:
        raise ConfigError("warmup_epochs trains the slice task in one process; run the warm-up "
                          "without torchrun and pass its stage1.pt as init_from")
    inner = dataclasses.replace(config, two_stage=True, epochs=config.warmup_epochs, warmup_epochs=0,
                                init_from=None, out_dir=str(Path(config.out_dir) / "warmup"))
    (log or RunLog(config.progress)).info(
        f"Curriculum: {config.warmup_epochs} epochs of the slice task (λ = 1, single slices) in "
        f"{inner.out_dir}, then {config.epochs} end-to-end epochs from the best of them")
    fit(inner, resume=resume, log=log, epochs_only=True)
    return Path(inner.out_dir) / TwoStage.epoch_best


def _fit(config: TrainConfig, resume: bool, log: RunLog | None,
         on_epoch_end: Callable[[int, dict], None] | None, progress: RunProgress,
         epochs_only: bool = False, start_from: str | Path | None = None) -> FitResult:
    """The run itself (see :func:`fit`); ``progress`` follows the epochs saved; the CNN
    starts from ``start_from``'s slice-task weights when given."""
    log = log or RunLog(config.progress)
    if on_epoch_end is not None:
        log = RunLog(log.progress, on_epoch_end, log.main)
    out = Path(config.out_dir)
    device = resolve_device(config.device)
    amp_dtype = resolve_amp(config.amp, device)
    with deterministic_mode(config.deterministic), session(device, config.batch_size) as dist:
        log, device = log.for_rank(dist.is_main), dist.device  # under torchrun: own GPU; rank 0 reports
        strategy_type = TwoStage if config.two_stage else EndToEnd
        strategy_type.check_processes(dist)
        seed_everything(config.seed)
        prepared = _prepare(config, dist, log)
        data_kind = "synthetic" if is_synthetic(config.data_dir) else "real"
        model = build_model(config)
        warm = warm_start(model, start_from, config) if start_from else None
        model = model.to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        criterion = build_criterion(config, prepared).to(device)
        strategy = strategy_type(config, prepared, model, criterion, device, amp_dtype, dist, log)
        tracker = EarlyStopping(strategy.monitor, config.patience)
        history = _resume(out / "last.pt", config, prepared, strategy, tracker, dist, log) if resume else []
        base_rate = strategy.base_rate_loss()
        progress.epochs_saved = len(history)
        log.info(_start_line(config, prepared, data_kind, strategy))
        base = {"config": config.to_dict(), "preprocess": config.preprocess.to_dict(),
                "model_config": model.model_config, "data": data_kind, "split": prepared.split,
                "distributed": dist.describe(config.batch_size)}
        # The best epoch's validation pass is the final one's when it read every slice in float32
        # in one process: the final evaluation then reuses it instead of reading validation again.
        val_set = strategy.epoch_val_set()  # made once: a dataset checks its cache entries once
        reusable = val_set is prepared.val and amp_dtype is None and not dist.enabled
        best_val = None
        for epoch in range(len(history), config.epochs):
            if tracker.stopped:
                break
            prepared.train.set_epoch(epoch)
            lr = strategy.optimizer.param_groups[0]["lr"]
            stats = strategy.train_epoch(epoch, log)
            dist.sync_buffers(model)
            val = evaluate_split(dist, model, criterion, val_set, config, device, amp_dtype, log, "val")
            row, thresholds = _history_row(epoch, lr, {**stats, "base_rate_loss": base_rate}, val, strategy)
            improved = dist.agree_with_main(tracker, tracker.update(_score(row, val, tracker.monitor), epoch + 1))
            history.append({**row, "best": improved})
            if improved:
                best_val = val if reusable else None
            _save_epoch(out, base, strategy, tracker, history, thresholds, improved, dist)
            progress.epochs_saved = len(history)
            line = strategy.epoch_line(epoch, stats, val, row)
            log.epoch(epoch + 1, history[-1], line + ("  *best" if improved else "")
                      + ("  (early stop)" if tracker.stopped else ""))
        if epochs_only:
            return _write_results(out, None, history, prepared, dist)
        best, extra = dist.from_main(lambda: strategy.finish(out, log))
        training = {**tracker.state_dict(), "epochs_run": len(history), "device": describe_amp(config),
                    # the epochs: end-to-end training, or stage 1 of a two-stage run
                    "epoch_seconds": float(sum(r.get("train_seconds", 0.0) for r in history)),
                    **dist.describe(config.batch_size), **extra}
        if warm:
            training["warm_start"] = {**warm, "cnn_lr_scale": config.cnn_lr_scale}
        stage2 = extra.get("sequence_stage", {})
        training["total_seconds"] = (training["epoch_seconds"] + stage2.get("embed_seconds", 0.0)
                                     + stage2.get("train_seconds", 0.0))
        metrics = final_evaluation(config, prepared, best, device, data_kind, training, dist, log,
                                   val_result=best_val)
    return _write_results(out, metrics, history, prepared, dist)


def _describe_batch(layout: dict, lr: float) -> str:
    """One line on the batch over processes (from :meth:`DistContext.describe`) and the lr."""
    world = layout["world_size"]
    return (f"batch {layout['global_batch_size']} scans per step (global) = "
            f"{layout['per_process_batch_size']} per process x {world} process{'es' if world > 1 else ''}"
            f"{'' if world == 1 else ' (' + layout['backend'] + ')'}; lr {lr:g}, scaling rule "
            f"{layout['lr_scaling']} (the global batch does not depend on the number of processes)")


def describe_amp(config: TrainConfig) -> str:
    """One line saying which device and precision ``config`` resolves to here."""
    device = resolve_device(config.device)
    return describe_precision(device, resolve_amp(config.amp, device), config.channels_last)


# --- the steps of fit ------------------------------------------------------------------

def _prepare(config: TrainConfig, dist: DistContext, log: RunLog) -> PreparedData:
    """:func:`~ichlib.training.data.prepare_data`; under ``torchrun`` rank 0 reads the folder
    first (filling the RSNA header cache the others then reuse), and each rank builds its
    share of the volume cache before all check the whole of it."""
    if not dist.enabled:
        return prepare_data(config, log)
    with dist.main_first():
        data = read_data(config)
    cache = volume_cache(data, config)
    for patient_id in data.patient_ids[dist.rank::dist.world_size]:
        with contextlib.suppress(IchlibError):  # a broken scan is reported by prepare_data
            cache.resized_volume(patient_id)
    dist.barrier()
    return prepare_data(config, log, data)


def _resume(path: Path, config: TrainConfig, prepared: PreparedData, strategy: Strategy,
            tracker: EarlyStopping, dist: DistContext, log: RunLog) -> list[dict]:
    """Restore ``last.pt`` into the model, the strategy's optimizer and the tracker; returns
    the history so far (empty when there is nothing to resume)."""
    if not dist.from_main(path.exists):
        log.info(f"No {path} to resume from; starting a new run.")
        return []
    ckpt = dist.from_main(lambda: load_checkpoint(path))
    _check_resume(ckpt, config, prepared.split, path)
    strategy.model.load_state_dict(ckpt["model"])
    strategy.optimizer.load_state_dict(ckpt["optimizer"])
    strategy.scheduler.load_state_dict(ckpt["lr_scheduler"])
    if ckpt.get("scaler"):
        strategy.scaler.load_state_dict(ckpt["scaler"])
    tracker.load_state_dict(ckpt["early_stopping"])
    restore_rng_state(ckpt["rng"])
    log.info(f"Resuming {path.parent} after epoch {int(ckpt['epoch'])} of {config.epochs}.")
    return list(ckpt["history"])


def _check_resume(ckpt: dict, config: TrainConfig, split: dict, path: Path) -> None:
    saved = ckpt.get("config", {})
    now = config.to_dict()
    differs = [f"{k}: saved {saved.get(k)!r}, now {now[k]!r}" for k in now
               if k not in RESUME_FREE and saved.get(k) != now[k]]
    if differs:
        raise ConfigError(f"{path}: cannot resume with different settings ({'; '.join(differs)}); "
                          "use the same settings or a new out_dir")
    if ckpt.get("split") != split:
        raise ConfigError(f"{path}: the patient split differs from the saved run's (the data "
                          "folder changed?); start a new run in a new out_dir")
    for key in _RESUMABLE:
        if key not in ckpt:
            raise ConfigError(f"{path}: has no {key!r}, so it is not a resumable last.pt")


def _start_line(config: TrainConfig, prepared: PreparedData, data_kind: str, strategy: Strategy) -> str:
    n = {name: len(ids) for name, ids in prepared.split.items()}
    return (f"Training {config.backbone} + BiLSTM on {describe_amp(config)}: {n['train']} train / "
            f"{n['val']} val / {n['test']} test patients, {data_kind.upper()} data, "
            f"{config.img_size} px, S = {config.seq_len}, {strategy.describe()}\n"
            + _describe_batch(strategy.dist.describe(config.batch_size), config.lr))


def _history_row(epoch: int, lr: float, stats: dict, val, strategy: Strategy) -> tuple[dict, dict]:
    """The epoch's history row, and the thresholds validation chooses now."""
    report = score_predictions(val.scan_labels, val.scan_probs, n_boot=0)
    slice_y, slice_p, _ = val.slice_rows()
    slices = score_predictions(slice_y, slice_p, n_boot=0, level="slice")
    thresholds, _ = choose_thresholds(val.scan_labels, val.scan_probs)
    row = {"epoch": epoch + 1, "lr": lr, **{f"train_{k}": v for k, v in stats.items()},
           "val_loss": val.loss, "val_scan_loss": val.scan_loss, "val_slice_loss": val.slice_loss,
           "val_mean_auc": report["mean_auc"], "val_slice_mean_auc": slices["mean_auc"],
           "val_patient_weighted_log_loss": report["patient_weighted_log_loss"]}
    return strategy.history_row(row, val), thresholds


def _score(row: dict, val, monitor: str) -> float | None:
    return {"scan_loss": val.scan_loss, "loss": val.loss, "slice_loss": val.slice_loss,
            "mean_auc": row["val_mean_auc"], "slice_mean_auc": row["val_slice_mean_auc"]}[monitor]


def _save_epoch(out: Path, base: dict, strategy: Strategy, tracker: EarlyStopping, history: list[dict],
                thresholds: dict, improved: bool, dist: DistContext) -> None:
    """The best epoch's checkpoint (if this is it), ``last.pt`` and ``history.csv``; rank 0 only."""
    if not dist.is_main:  # the other ranks hold the same state
        return
    common = {**base, "model": strategy.model.state_dict(), "epoch": len(history),
              "thresholds": thresholds, "best_score": tracker.best_score, "monitor": tracker.monitor,
              "history": history}
    if improved:
        save_checkpoint(out / strategy.epoch_best, common)
    scaler = strategy.scaler
    save_checkpoint(out / "last.pt", {
        **common, "optimizer": strategy.optimizer.state_dict(),
        "lr_scheduler": strategy.scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "early_stopping": tracker.state_dict(), "rng": capture_rng_state()})
    atomic_write_text(out / "history.csv", pd.DataFrame(history).to_csv(index=False))


def _write_results(out: Path, metrics: dict | None, history: list[dict], prepared: PreparedData,
                   dist: DistContext) -> FitResult:
    frame = pd.DataFrame(history)
    paths = {name: out / name for name in ("best.pt", "last.pt", "history.csv", "metrics.json")}
    if dist.is_main:
        if metrics is not None:
            atomic_write_text(paths["metrics.json"], json.dumps(json_safe(metrics), indent=2, allow_nan=False))
        atomic_write_text(paths["history.csv"], frame.to_csv(index=False))
    return FitResult(out_dir=out, history=frame, metrics=metrics or {}, split=prepared.split,
                     best_path=paths["best.pt"], last_path=paths["last.pt"],
                     history_path=paths["history.csv"], metrics_path=paths["metrics.json"])
