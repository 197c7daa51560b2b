"""Training and evaluation, in the shape of torchvision's ``references/classification/train.py``.

:func:`fit` runs a whole experiment from a :class:`TrainConfig`:

1. read and validate the CT-ICH folder, build the resized-volume cache, and split the
   patients into train / validation / test (:func:`ichlib.splits.patient_split`);
2. train the CNN + BiLSTM with AdamW and a per-step cosine schedule, evaluating on
   validation after every epoch; validation picks the best epoch (and early stopping)
   and the decision thresholds;
3. evaluate the best weights once on the held-out test patients, which are used for
   nothing else, and score the intensity baseline on the same patients.

Files in ``out_dir``: ``last.pt`` (full training state, every epoch), ``best.pt`` (the
weights of the best validation epoch, with everything :mod:`ichlib.predict` needs),
``history.csv`` and ``metrics.json``. All are written atomically. Results on the
synthetic phantom are labelled ``"data": "synthetic"``.

With ``two_stage=True`` each epoch of the loop above trains the CNN on single slices
instead (stage 1, :class:`ichlib.two_stage.SliceStage`, as many slices per epoch as
end-to-end training uses), selected on the validation slice loss (``stage1.pt``); then the
BiLSTM and scan head are trained on cached slice embeddings of the frozen CNN, and the
result is ``best.pt``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ichlib.atomic import atomic_write_text
from ichlib.augment import ScanAugment
from ichlib.baseline import run_intensity_baseline
from ichlib.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from ichlib.ctich import CtIchData
from ichlib.dataset import PreprocessConfig, ScanDataset, default_cache_dir
from ichlib.distributed import LOCAL, LOSS_WEIGHT_KEY, DistContext, session
from ichlib.errors import ConfigError, DataError, IchlibError
from ichlib.labels import LABELS
from ichlib.losses import AUXILIARY_LOSS_WEIGHT, ScanSliceLoss, pos_weight_from_labels
from ichlib.metrics import choose_thresholds, flatten_slices, score_predictions
from ichlib.model import BACKBONES, CNNBiLSTM
from ichlib.paths import is_synthetic
from ichlib.rsna import read_dataset, rsna_group_split
from ichlib.splits import check_disjoint, patient_split

if TYPE_CHECKING:
    from ichlib.two_stage import SliceStage

#: What the validation monitor can be, and whether lower is better.
MONITORS: dict[str, bool] = {"scan_loss": True, "loss": True, "slice_loss": True, "mean_auc": False}
#: Config fields that may differ when resuming (they do not change what is computed).
_RESUME_FREE = frozenset({"data_dir", "out_dir", "cache_dir", "num_workers", "device", "progress",
                          "n_boot"})


@dataclass
class TrainConfig:
    """Everything that defines a training run. Stored in every checkpoint.

    Attributes:
        data_dir: CT-ICH folder.
        out_dir: Run folder for checkpoints, history and metrics.
        epochs: Training epochs.
        batch_size: Scans per optimizer step. Under ``torchrun`` this is the global batch,
            split evenly over the processes (see :mod:`ichlib.distributed`).
        img_size: In-plane size of the model input.
        seq_len: Slices ``S`` sampled per scan.
        aux_weight: ``λ``, weight of the slice-level loss (:data:`AUXILIARY_LOSS_WEIGHT`).
        backbone: ``resnet18``, ``resnet34`` or ``resnet50``.
        windows: CT windows, one input channel each.
        seed: Seed of the split, the initialisation, the shuffling and the augmentation.
        lr: AdamW learning rate (peak of the cosine schedule).
        weight_decay: AdamW weight decay.
        val_fraction: Share of patients for validation (model selection, thresholds).
        test_fraction: Share of patients held out for the final test.
        patience: Stop after this many epochs without validation improvement (None: never).
        monitor: Validation quantity that picks the best epoch: ``"scan_loss"`` (the
            patient-level BCE; the same criterion for every ``λ``, and smooth on a small
            validation set), ``"loss"`` (the total loss) or ``"mean_auc"`` (mean ROC AUC
            over the labels defined in validation; falls back to ``scan_loss`` when none is)
            or ``"slice_loss"`` (the slice-head BCE; what ``two_stage`` uses for stage 1).
        num_workers: DataLoader worker processes (0 loads in the training process, which
            is fastest on a 2-core machine with the cache built).
        cache_dir: Resized-volume cache; None uses :func:`ichlib.dataset.default_cache_dir`
            (``$ICHLIB_CACHE`` or ``~/.cache/ichlib``), shared by all runs: entries are keyed
            by scan file and image size, so two runs on the same data build it once.
        amp: ``"auto"`` (bf16 autocast on CPUs with native bf16 — AMX or AVX512-BF16 —
            bf16 or fp16 on CUDA, else fp32), ``"bf16"``, ``"fp16"`` (CUDA), or ``"off"``.
        channels_last: Run the CNN in channels-last memory format.
        deterministic: Ask PyTorch for deterministic kernels (CPU runs are reproducible
            anyway; on CUDA a few kernels have no deterministic version and only warn).
        pos_weight: Weight positives by ``n_neg / n_pos`` from the training labels.
        skip_bad: Leave out patients whose files are broken (listed in metrics.json)
            instead of stopping.
        augment: Flip/rotate/shift/intensity augmentation of training scans.
        lstm_hidden: Hidden size of each LSTM direction.
        dropout: Dropout before the heads.
        pretrained: Start from torchvision ImageNet weights (must be in the torch hub cache
            when offline).
        max_train_batches: Stop each training epoch after this many batches (smoke runs).
        n_boot: Bootstrap replicates for the test CIs.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ...
        progress: Show progress bars (also off when ``TQDM_DISABLE`` is set) and print one
            line per epoch.
        two_stage: Train in two stages (:mod:`ichlib.two_stage`): for ``epochs``, the CNN
            and slice head on single slices, half of them with blood (``aux_weight`` and
            ``monitor`` do not apply; the validation slice loss picks the epoch); then the
            BiLSTM and scan head on cached embeddings of the frozen CNN.
        sequence_epochs: Epochs of that second stage (it stops early after 40 epochs
            without a lower validation scan loss).
    """

    data_dir: str
    out_dir: str
    epochs: int = 10
    batch_size: int = 4
    img_size: int = 256
    seq_len: int = 16
    aux_weight: float = AUXILIARY_LOSS_WEIGHT
    backbone: str = "resnet18"
    windows: tuple[str, ...] = ("brain",)
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    patience: int | None = None
    monitor: str = "scan_loss"
    num_workers: int = 0
    cache_dir: str | None = None
    amp: str = "auto"
    channels_last: bool = True
    deterministic: bool = False
    pos_weight: bool = False
    skip_bad: bool = False
    augment: bool = True
    lstm_hidden: int = 256
    dropout: float = 0.3
    pretrained: bool = False
    max_train_batches: int | None = None
    n_boot: int = 1000
    device: str = "auto"
    progress: bool = True
    two_stage: bool = False
    sequence_epochs: int = 150

    def __post_init__(self) -> None:
        self.data_dir = str(self.data_dir)
        self.out_dir = str(self.out_dir)
        self.cache_dir = None if self.cache_dir is None else str(self.cache_dir)
        self.windows = PreprocessConfig(windows=self.windows).windows
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.monitor not in MONITORS:
            raise ConfigError(f"unknown monitor {self.monitor!r}; choose one of {', '.join(MONITORS)}")
        if not 0.0 <= self.aux_weight <= 1.0:
            raise ConfigError(f"aux_weight (λ) must be in [0, 1], got {self.aux_weight}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {self.amp!r}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be >= 1 or None, got {self.patience}")
        if self.sequence_epochs < 1:
            raise ConfigError(f"sequence_epochs must be >= 1, got {self.sequence_epochs}")
        PreprocessConfig(windows=self.windows, img_size=self.img_size, seq_len=self.seq_len)

    @property
    def preprocess(self) -> PreprocessConfig:
        """The preprocessing part of the config."""
        return PreprocessConfig(windows=self.windows, img_size=self.img_size, seq_len=self.seq_len)

    def to_dict(self) -> dict:
        """Plain dict (lists, str, numbers, None): safe for checkpoints and JSON."""
        d = dataclasses.asdict(self)
        d["windows"] = list(self.windows)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**{**d, "windows": tuple(d.get("windows", ("brain",)))})


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

    def slice_rows(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Flattened slice-level ``(labels, probs, patient per row)``, each slice once."""
        return flatten_slices(self.slice_labels, self.slice_probs, self.patient_ids, self.slice_indices)


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
        """Record the score of ``epoch``; returns True if it is the new best."""
        lower_is_better = MONITORS[self.monitor]
        improved = score is not None and (self.best_score is None or (
            score < self.best_score if lower_is_better else score > self.best_score))
        if improved:
            self.best_score, self.best_epoch, self.since_best = float(score), int(epoch), 0
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


@dataclass
class PreparedData:
    """Validated data, split and datasets for one run (see :func:`prepare_data`)."""

    data: CtIchData
    split: dict[str, list[str]]
    train: ScanDataset
    val: ScanDataset
    test: ScanDataset
    skipped: list[dict] = field(default_factory=list)
    cache_dir: Path | None = None


# --- devices, precision, seeds ---------------------------------------------------------

def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; anything else as ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


#: Environment variable that overrides ``amp="auto"`` (``bf16``, ``fp16``, ``off`` or ``auto``):
#: ``ICHLIB_AMP=bf16`` runs the bf16 path on any CPU, emulated where the CPU lacks bf16, so
#: the test suite exercises it everywhere (``make test-bf16``).
AMP_ENV = "ICHLIB_AMP"
AMP_CHOICES = ("auto", "bf16", "fp16", "off")


def cpu_has_native_bf16() -> bool:
    """True if this CPU computes bfloat16 in hardware (AMX tiles or AVX512-BF16)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported",
                                                          "_is_avx512_bf16_supported")]
    if all(c is not None for c in checks):
        with contextlib.suppress(Exception):
            return any(c() for c in checks)
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())


def cpu_has_amx() -> bool:
    """True if this CPU has AMX tiles (Sapphire Rapids and later)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if check is not None:
        with contextlib.suppress(Exception):
            return bool(check())
    return "amx_bf16" in _cpu_flags()


def _cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        return set(Path("/proc/cpuinfo").read_text().split())
    return set()


def bf16_pays_on_cpu() -> bool:
    """Whether bf16 autocast trains faster than float32 on this CPU.

    Only AMX makes it pay. With AVX512-BF16 alone, ResNet-18 training ran slower in bf16
    than in float32, and with neither it is emulated and slower still (figures in
    ``benchmarks/RESULTS.md``).
    """
    return cpu_has_amx()


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: plain float32).

    ``"auto"``: on CUDA bf16 where supported, else fp16; on CPU bf16 only where it is
    faster than float32 (:func:`bf16_pays_on_cpu`), else float32. The environment variable
    ``ICHLIB_AMP`` (:data:`AMP_ENV`), when set, replaces ``"auto"``; an explicit choice wins
    over it.

    Raises:
        ConfigError: For an unknown value, or ``fp16`` without CUDA.
    """
    if amp == "auto":
        forced = os.environ.get(AMP_ENV, "").strip().lower()
        if forced and forced not in AMP_CHOICES:
            raise ConfigError(f"{AMP_ENV}={forced!r}; choose one of {', '.join(AMP_CHOICES)}")
        amp = forced or "auto"
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("amp='fp16' needs CUDA; use 'bf16' or 'off' on the CPU")
        return torch.float16
    if amp != "auto":
        raise ConfigError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and bf16_pays_on_cpu():
        return torch.bfloat16
    return None


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``device`` with ``amp_dtype``, or a no-op when None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


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


def progress_enabled(progress: bool) -> bool:
    """Progress bars are shown if asked for and ``TQDM_DISABLE`` is not set."""
    return progress and os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true", "yes")


# --- one epoch -------------------------------------------------------------------------

def train_one_epoch(model: CNNBiLSTM, criterion: ScanSliceLoss, optimizer: torch.optim.Optimizer,
                    loader: DataLoader, device: torch.device, epoch: int,
                    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    amp_dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
                    max_batches: int | None = None, progress: bool = True,
                    dist: DistContext = LOCAL) -> dict[str, float]:
    """Train for one pass over ``loader``; the scheduler steps after every batch.

    Under ``torchrun`` (``dist`` active) ``model`` is the DDP-wrapped model, each batch
    carries loss weights (:class:`ichlib.distributed.ShardedEpochSampler`) and the
    returned statistics are over all processes.

    Returns:
        Mean ``loss``, ``scan_loss``, ``slice_loss`` over scans, plus ``seconds`` and
        ``slices_per_s`` (training throughput).

    Raises:
        IchlibError: On a non-finite loss (naming the epoch and batch).
    """
    model.train()
    totals = np.zeros(3)
    n_scans = n_slices = 0
    start = time.perf_counter()
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    bar = tqdm(loader, total=n_batches, desc=f"epoch {epoch + 1} train", leave=False,
               disable=not progress_enabled(progress))
    for i, batch in enumerate(bar):
        if i >= n_batches:
            break
        x = batch["x"].to(device, non_blocking=True)
        scan_y = batch["scan_labels"].to(device, non_blocking=True)
        slice_y = batch["slice_labels"].to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            output = model(x)
        parts = criterion(output, scan_y, slice_y)
        if not torch.isfinite(parts.total):
            raise IchlibError(f"non-finite training loss at epoch {epoch + 1}, batch {i + 1} "
                              f"(patients {', '.join(batch['patient_id'])}); lower the learning "
                              "rate or turn amp off")
        weights = batch.get(LOSS_WEIGHT_KEY)  # distributed: this rank's share of the global batch
        loss = parts.total if weights is None else parts.total * weights.sum().to(parts.total)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
        b = x.shape[0] if weights is None else int((weights > 0).sum())  # padding does not count
        totals += b * np.array([parts.total.item(), parts.scan.item(), parts.slice.item()])
        n_scans += b
        n_slices += b * x.shape[1]
        bar.set_postfix(loss=f"{totals[0] / n_scans:.4f}")
    seconds = time.perf_counter() - start
    totals, n_scans, n_slices = dist.sum_epoch(totals, n_scans, n_slices)
    mean = totals / max(n_scans, 1)
    return {"loss": float(mean[0]), "scan_loss": float(mean[1]), "slice_loss": float(mean[2]),
            "seconds": seconds, "slices_per_s": n_slices / seconds if seconds > 0 else float("nan")}


def evaluate(model: CNNBiLSTM, criterion: ScanSliceLoss, loader: DataLoader, device: torch.device,
             amp_dtype: torch.dtype | None = None, progress: bool = True,
             desc: str = "eval", dist: DistContext = LOCAL) -> EvalResult:
    """Predict every scan of ``loader`` under ``torch.inference_mode()``.

    Under ``torchrun`` (``dist`` active) ``loader`` is this rank's share
    (:meth:`~ichlib.distributed.DistContext.eval_loader`); the result is gathered from
    all ranks and equals a single-process evaluation of the whole split.

    Returns:
        :class:`EvalResult` with probabilities per patient and per sampled slice, and the
        mean losses.
    """
    model.eval()
    ids: list[str] = []
    arrays: dict[str, list[np.ndarray]] = {k: [] for k in ("sp", "sy", "lp", "ly", "li")}
    totals = np.zeros(3)
    batch_totals: list[np.ndarray] = []
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, leave=False, disable=not progress_enabled(progress)):
            x = batch["x"].to(device, non_blocking=True)
            scan_y = batch["scan_labels"].to(device)
            slice_y = batch["slice_labels"].to(device)
            with autocast(device, amp_dtype):
                output = model(x)
            parts = criterion(output, scan_y, slice_y)
            batch_totals.append(x.shape[0] * np.array([parts.total.item(), parts.scan.item(),
                                                       parts.slice.item()]))
            ids += list(batch["patient_id"])
            arrays["sp"].append(torch.sigmoid(output.scan_logits.float()).cpu().numpy())
            arrays["lp"].append(torch.sigmoid(output.slice_logits.float()).cpu().numpy())
            arrays["sy"].append(batch["scan_labels"].numpy())
            arrays["ly"].append(batch["slice_labels"].numpy())
            arrays["li"].append(batch["slice_indices"].numpy())
    ids, arrays, batch_totals = dist.gather_batches(ids, arrays, batch_totals)
    for batch_total in batch_totals:  # in loader order, as one process adds them
        totals += batch_total
    if not ids:
        raise ConfigError(f"nothing to evaluate: the {desc} loader is empty")
    mean = totals / len(ids)
    cat = {k: np.concatenate(v) for k, v in arrays.items()}
    return EvalResult(patient_ids=ids, scan_probs=cat["sp"], scan_labels=cat["sy"],
                      slice_probs=cat["lp"], slice_labels=cat["ly"], slice_indices=cat["li"],
                      loss=float(mean[0]), scan_loss=float(mean[1]), slice_loss=float(mean[2]))


# --- data ------------------------------------------------------------------------------

def prepare_data(config: TrainConfig, dist: DistContext = LOCAL) -> PreparedData:
    """Read the folder, build the cache, drop broken patients if allowed, split, make datasets.

    Under ``torchrun`` rank 0 reads the folder first (filling the RSNA header cache the
    others then reuse), and each rank builds its share of the volume cache.

    Raises:
        DataError: On broken patients without ``skip_bad`` (all of them listed).
        ConfigError: If a split would be empty.
    """
    try:
        with dist.main_first():
            data = read_dataset(config.data_dir, on_error="skip" if config.skip_bad else "raise")
    except DataError as exc:
        if config.skip_bad or "problem(s) found" not in exc.problem:
            raise
        raise DataError(exc.path, f"{exc.problem}\nFix or remove the broken patients, or pass "
                        "skip_bad=True (--skip-bad) to leave them out.") from exc
    skipped = [{"patient_id": p.patient_id, "path": p.path, "problem": p.problem}
               for p in data.problems]
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    preprocess = config.preprocess
    everyone = ScanDataset(data, data.patient_ids, preprocess, cache_dir)
    failed: dict[str, DataError] = {}
    dist.build_cache_shard(everyone.resized_volume, data.patient_ids)
    for pid in tqdm(data.patient_ids, desc="cache", leave=False,
                    disable=not progress_enabled(config.progress)):
        try:
            everyone.resized_volume(pid)
        except DataError as exc:
            failed[pid] = exc
    if failed and not config.skip_bad:
        listing = "\n  ".join(str(e) for e in failed.values())
        raise DataError(data.root, f"{len(failed)} scan(s) could not be read:\n  {listing}\n"
                        "Fix or remove them, or pass skip_bad=True (--skip-bad) to leave them out.")
    skipped += [{"patient_id": pid, "path": exc.path, "problem": exc.problem} for pid, exc in failed.items()]
    patients = data.patients.drop(index=list(failed))
    if len(patients) == 0:
        raise DataError(data.root, "no usable patients")
    if "patient_id_dicom" in patients.columns:  # RSNA: scans are series; keep each person together
        split = rsna_group_split(patients, val_fraction=config.val_fraction,
                                 test_fraction=config.test_fraction, seed=config.seed)
    else:
        split = patient_split(patients, config.val_fraction, config.test_fraction, seed=config.seed)
    check_disjoint(split)
    empty = [name for name, ids in split.items() if not ids]
    if empty:
        raise ConfigError(f"the {' and '.join(empty)} split(s) would be empty with {len(patients)} "
                          f"patients, val_fraction={config.val_fraction} and test_fraction="
                          f"{config.test_fraction}; use more patients or larger fractions")
    augment = ScanAugment() if config.augment else None
    return PreparedData(
        data=data, split=split, skipped=skipped, cache_dir=cache_dir,
        train=ScanDataset(data, split["train"], preprocess, cache_dir, train=True, augment=augment,
                          seed=config.seed),
        val=ScanDataset(data, split["val"], preprocess, cache_dir, seed=config.seed),
        test=ScanDataset(data, split["test"], preprocess, cache_dir, seed=config.seed),
    )


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


# --- the run ---------------------------------------------------------------------------

def build_model(config: TrainConfig) -> CNNBiLSTM:
    """The model described by ``config`` (on the CPU, float32)."""
    return CNNBiLSTM(backbone=config.backbone, in_channels=len(config.windows),
                     lstm_hidden=config.lstm_hidden, dropout=config.dropout,
                     pretrained=config.pretrained)


def make_optimizer(model: torch.nn.Module | Iterable[torch.nn.Parameter], lr: float = 1e-3,
                   weight_decay: float = 1e-4) -> torch.optim.AdamW:
    """AdamW over a model's parameters (or a list of parameters), fused where PyTorch
    supports it (on the CPU about 8x faster per step for ResNet-18 than the per-parameter
    loop; the same update)."""
    params = list(model.parameters() if isinstance(model, torch.nn.Module) else model)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # device or PyTorch without a fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def fit(config: TrainConfig, resume: bool = False,
        on_epoch_end: Callable[[int, dict], None] | None = None) -> FitResult:
    """Train, select on validation, test once; write the run folder.

    Args:
        config: The run's settings.
        resume: Continue from ``out_dir/last.pt`` if it exists (model, optimizer,
            scheduler, epoch, RNG states, history, best score); a finished run is only
            evaluated again. The saved config must match except for paths, workers,
            device and progress. Without ``resume`` an existing run folder is overwritten.
        on_epoch_end: Called as ``on_epoch_end(epochs_done, history_row)`` after each
            epoch's files are written (for notebooks; raising stops the run there).

    Returns:
        :class:`FitResult`.
    """
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("best.pt", "last.pt", "history.csv", "metrics.json")}
    # Two stages: the loop below is stage 1, and its best epoch goes to stage1.pt.
    stage1_best = out / "stage1.pt" if config.two_stage else paths["best.pt"]
    device = resolve_device(config.device)
    amp_dtype = resolve_amp(config.amp, device)
    show = config.progress
    with deterministic_mode(config.deterministic), session(device, config.batch_size) as dist:
        device, show = dist.device, show and dist.is_main  # under torchrun: own GPU; rank 0 prints
        if config.two_stage and dist.enabled:
            raise ConfigError("two-stage training runs in one process; start it without torchrun")
        seed_everything(config.seed)
        prepared = prepare_data(config, dist)
        data_kind = "synthetic" if is_synthetic(config.data_dir) else "real"
        model = build_model(config).to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        criterion = _criterion(config, prepared).to(device)
        net = dist.wrap(model)  # DDP under torchrun; checkpoints keep the unwrapped model
        slice_stage = None
        if config.two_stage:  # stage 1 trains the CNN on single slices (ichlib.two_stage)
            slice_stage = _slice_stage(config, prepared, model, device, amp_dtype)
            optimizer, scheduler = slice_stage.optimizer, slice_stage.scheduler
        else:
            optimizer = make_optimizer(model, config.lr, config.weight_decay)
            steps = steps_per_epoch(len(prepared.train), config.batch_size, config.max_train_batches)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs * steps))
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        # Stage 1 of two_stage is chosen for its embeddings, by the validation slice loss.
        monitor = "slice_loss" if config.two_stage else _effective_monitor(config, prepared)
        tracker = EarlyStopping(monitor, config.patience)
        epochs_done, history_rows = 0, []
        if dist.from_main(lambda: resume and paths["last.pt"].exists()):
            ckpt = dist.from_main(lambda: load_checkpoint(paths["last.pt"]))
            _check_resume(ckpt, config, prepared.split, paths["last.pt"])
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["lr_scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            tracker.load_state_dict(ckpt["early_stopping"])
            epochs_done, history_rows = int(ckpt["epoch"]), list(ckpt["history"])
            restore_rng_state(ckpt["rng"])
            if show:
                print(f"Resuming {out} after epoch {epochs_done} of {config.epochs}.", flush=True)
        elif resume and show:
            print(f"No {paths['last.pt']} to resume from; starting a new run.", flush=True)

        if show:
            n = {name: len(ids) for name, ids in prepared.split.items()}
            print(f"Training {config.backbone} + BiLSTM on {describe_amp(config)}: {n['train']} train / "
                  f"{n['val']} val / {n['test']} test patients, {data_kind.upper()} data, "
                  f"{config.img_size} px, S = {config.seq_len}, "
                  f"{'two stages' if config.two_stage else f'λ = {config.aux_weight}'}", flush=True)
            print(describe_batch(dist.describe(config.batch_size), config.lr), flush=True)
        base = {"config": config.to_dict(), "preprocess": config.preprocess.to_dict(),
                "model_config": model.model_config, "data": data_kind, "split": prepared.split,
                "distributed": dist.describe(config.batch_size)}
        val_loader = make_loader(prepared.val, config.batch_size, num_workers=config.num_workers,
                                 pin_memory=device.type == "cuda")
        if dist.enabled:
            val_loader = dist.eval_loader(prepared.val, config.batch_size, config.num_workers,
                                          pin_memory=device.type == "cuda")
        for epoch in range(epochs_done, config.epochs):
            if tracker.stopped:
                break
            prepared.train.set_epoch(epoch)
            loader = None if slice_stage is not None else make_loader(
                prepared.train, config.batch_size, shuffle=True, seed=config.seed, epoch=epoch,
                num_workers=config.num_workers, pin_memory=device.type == "cuda")
            if dist.enabled:
                loader = dist.train_loader(prepared.train, config.batch_size, config.seed, epoch,
                                           config.num_workers, pin_memory=device.type == "cuda")
                dist.seed_epoch(config.seed, epoch)
            lr = optimizer.param_groups[0]["lr"]
            if slice_stage is not None:
                train_stats = slice_stage.train_epoch(epoch, progress_enabled(show))
            else:
                train_stats = train_one_epoch(net, criterion, optimizer, loader, device, epoch, scheduler,
                                              amp_dtype, scaler, config.max_train_batches, show, dist)
            dist.sync_buffers(model)
            val = evaluate(model, criterion, val_loader, device, amp_dtype, show, desc="val", dist=dist)
            val_report = score_predictions(val.scan_labels, val.scan_probs, n_boot=0)
            thresholds, _ = choose_thresholds(val.scan_labels, val.scan_probs)
            row = {"epoch": epoch + 1, "lr": lr,
                   **{f"train_{k}": v for k, v in train_stats.items()},
                   "val_loss": val.loss, "val_scan_loss": val.scan_loss, "val_slice_loss": val.slice_loss,
                   "val_mean_auc": val_report["mean_auc"],
                   "val_weighted_log_loss": val_report["weighted_log_loss"]}
            if slice_stage is not None:  # stage 1 optimises the slice loss; the scan head is untrained
                row.update(val_loss=val.slice_loss, val_scan_loss=None, val_mean_auc=None,
                           val_weighted_log_loss=None)
            score = {"scan_loss": val.scan_loss, "loss": val.loss, "slice_loss": val.slice_loss,
                     "mean_auc": val_report["mean_auc"]}[monitor]
            improved = dist.agree_with_main(tracker, tracker.update(score, epoch + 1))
            epochs_done = epoch + 1
            row["best"] = improved
            history_rows.append(row)
            common = {**base, "model": model.state_dict(), "epoch": epochs_done, "thresholds": thresholds,
                      "best_score": tracker.best_score, "monitor": monitor, "history": history_rows}
            if improved and dist.is_main:
                save_checkpoint(stage1_best, common)
            if dist.is_main:  # only rank 0 writes; the other ranks hold the same state
                save_checkpoint(paths["last.pt"], {
                    **common, "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                    "early_stopping": tracker.state_dict(), "rng": capture_rng_state()})
                history = pd.DataFrame(history_rows)
                atomic_write_text(paths["history.csv"], history.to_csv(index=False))
            if show and slice_stage is not None:
                print(f"stage 1 epoch {epoch + 1}/{config.epochs}  train slice loss "
                      f"{train_stats['slice_loss']:.4f}  val slice loss {val.slice_loss:.4f}  "
                      f"{train_stats['slices_per_s']:.1f} slices/s{'  *best' if improved else ''}"
                      f"{'  (early stop)' if tracker.stopped else ''}", flush=True)
            elif show:
                auc = row["val_mean_auc"]
                print(f"epoch {epoch + 1}/{config.epochs}  train loss {train_stats['loss']:.4f}  "
                      f"val loss {val.loss:.4f} (scan {val.scan_loss:.4f})  val mean AUC "
                      f"{'n/a' if auc is None else f'{auc:.3f}'}  {train_stats['slices_per_s']:.1f} "
                      f"slices/s{'  *best' if improved else ''}"
                      f"{'  (early stop)' if tracker.stopped else ''}", flush=True)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, row)

        best = dist.from_main(lambda: stage1_best if stage1_best.exists() else paths["last.pt"])
        training = {**tracker.state_dict(), "epochs_run": epochs_done, "device": describe_amp(config),
                    # the epochs: end-to-end training, or stage 1 of a two-stage run
                    "epoch_seconds": float(sum(r.get("train_seconds", 0.0) for r in history_rows)),
                    **dist.describe(config.batch_size)}
        training["total_seconds"] = training["epoch_seconds"]
        if config.two_stage:
            stage2 = run_sequence_stage(config, prepared, best, paths["best.pt"], device, amp_dtype)
            training["sequence_stage"] = stage2
            training["total_seconds"] += stage2["embed_seconds"] + stage2["train_seconds"]
            best = paths["best.pt"]
        metrics = final_evaluation(config, prepared, best, device, data_kind, training, dist)
    history = pd.DataFrame(history_rows)
    if dist.is_main:
        atomic_write_text(paths["metrics.json"], json.dumps(json_safe(metrics), indent=2, allow_nan=False))
        atomic_write_text(paths["history.csv"], history.to_csv(index=False))
    return FitResult(out_dir=out, history=history, metrics=metrics, split=prepared.split,
                     best_path=paths["best.pt"], last_path=paths["last.pt"],
                     history_path=paths["history.csv"], metrics_path=paths["metrics.json"])


def _slice_stage(config: TrainConfig, prepared: PreparedData, model: CNNBiLSTM, device: torch.device,
                 amp_dtype: torch.dtype | None) -> SliceStage:
    """Stage 1 of ``two_stage``, with the end-to-end budget: ``n_train x S`` slices per epoch."""
    from ichlib.two_stage import SliceStage, SliceStageConfig

    stage = SliceStageConfig(epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay,
                             seed=config.seed)
    steps = max(1, math.ceil(len(prepared.train) * config.seq_len / stage.batch_size))
    if config.max_train_batches is not None:
        steps = min(steps, config.max_train_batches)
    weight = None
    if config.pos_weight:
        slice_y = np.concatenate([prepared.data.slice_labels(pid) for pid in prepared.split["train"]])
        weight = pos_weight_from_labels(slice_y)
    return SliceStage(model, prepared.train, stage, steps, device, amp_dtype,
                      ScanAugment() if config.augment else None, weight)


def run_sequence_stage(config: TrainConfig, prepared: PreparedData, stage1_path: Path, best_path: Path,
                       device: torch.device, amp_dtype: torch.dtype | None) -> dict:
    """Stage 2 of ``two_stage``: embed with the stage-1 CNN, train the sequence half, save.

    Writes ``best_path``: the stage-1 checkpoint with the new sequence weights and
    thresholds chosen on validation.

    Returns:
        A summary for metrics.json: epochs run, best epoch, seconds (embedding and
        training) and the per-epoch losses.
    """
    from ichlib.two_stage import SequenceStageConfig, embed_scans, train_sequence_stage

    ckpt = load_checkpoint(stage1_path)
    model = build_model(dataclasses.replace(config, pretrained=False)).to(device)
    model.load_state_dict(ckpt["model"])
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    ids = prepared.split["train"] + prepared.split["val"]
    everyone = ScanDataset(prepared.data, ids, config.preprocess, prepared.cache_dir)
    embeddings = embed_scans(model, everyone, device, amp_dtype, progress=progress_enabled(config.progress))
    embed_seconds = time.perf_counter() - start
    criterion = _criterion(config, prepared)
    stage = SequenceStageConfig(epochs=config.sequence_epochs, batch_size=max(config.batch_size, 8),
                                seed=config.seed)
    result = train_sequence_stage(
        model, embeddings, {pid: prepared.data.scan_labels(pid) for pid in ids}, prepared.split["train"],
        prepared.split["val"], config.seq_len, stage, device, pos_weight=criterion.scan_pos_weight,
        progress=config.progress)
    val_loader = make_loader(prepared.val, config.batch_size, num_workers=config.num_workers)
    val = evaluate(model, criterion.to(device), val_loader, device, amp_dtype, config.progress, desc="val")
    thresholds, _ = choose_thresholds(val.scan_labels, val.scan_probs)
    save_checkpoint(best_path, {**{k: v for k, v in ckpt.items() if k not in _TRAINING_STATE},
                                "model": model.state_dict(), "thresholds": thresholds,
                                "stage": "two-stage", "best_score": result.best_val_scan_loss})
    if config.progress:
        print(f"Stage 2: embedded {len(ids)} scans in {embed_seconds:.1f} s, trained the BiLSTM for "
              f"{len(result.history)} epochs in {result.seconds:.1f} s (best epoch {result.best_epoch}, "
              f"val scan loss {result.best_val_scan_loss:.4f})", flush=True)
    return {"epochs_run": len(result.history), "best_epoch": result.best_epoch,
            "best_val_scan_loss": result.best_val_scan_loss, "embed_seconds": embed_seconds,
            "train_seconds": result.seconds, "history": result.history}


#: Keys of last.pt that a weights-only checkpoint (best.pt) does not carry.
_TRAINING_STATE = frozenset({"optimizer", "lr_scheduler", "scaler", "early_stopping", "rng"})


def final_evaluation(config: TrainConfig, prepared: PreparedData, best_path: Path,
                     device: torch.device, data_kind: str,
                     training: dict | None = None, dist: DistContext = LOCAL) -> dict:
    """Evaluate the best checkpoint: thresholds from validation, metrics on test, baseline.

    Always in float32, whatever precision trained the model: the reported numbers and the
    test probabilities must not depend on the CPU's bf16 support, and a float32 pass over
    the validation and test scans is cheap.

    ``training`` (best epoch, early stopping, ...) is recorded as it is. Under ``torchrun``
    rank 0 reads the checkpoint, every rank predicts its share, and all compute the same
    metrics from the gathered predictions.

    Returns:
        The content of ``metrics.json``.
    """
    import ichlib

    ckpt = dist.from_main(lambda: load_checkpoint(best_path))
    model = build_model(dataclasses.replace(config, pretrained=False)).to(device)
    model.load_state_dict(ckpt["model"])
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = _criterion(config, prepared).to(device)
    loaders = {name: make_loader(getattr(prepared, name), config.batch_size,
                                 num_workers=config.num_workers) for name in ("val", "test")}
    if dist.enabled:
        loaders = {name: dist.eval_loader(getattr(prepared, name), config.batch_size, config.num_workers)
                   for name in ("val", "test")}
    show = config.progress and dist.is_main
    val = evaluate(model, criterion, loaders["val"], device, None, show, desc="val", dist=dist)
    test = evaluate(model, criterion, loaders["test"], device, None, show, desc="test", dist=dist)

    thresholds, threshold_notes = choose_thresholds(val.scan_labels, val.scan_probs)
    val_slices = val.slice_rows()
    slice_thresholds, _ = choose_thresholds(val_slices[0], val_slices[1])
    y_sl, p_sl, groups = test.slice_rows()
    boot = {"n_boot": config.n_boot, "seed": config.seed}
    baseline = run_intensity_baseline(prepared.train, prepared.val, prepared.test, **boot)
    synthetic_note = ("SYNTHETIC phantom data: these numbers say whether the pipeline works, "
                      "not how well it would detect hemorrhage in patients.")
    return {
        "data": data_kind,
        "note": synthetic_note if data_kind == "synthetic" else
                "research code on real scans; not a medical device",
        "ichlib_version": ichlib.__version__,
        "labels": list(LABELS),
        "config": config.to_dict(),
        "split": prepared.split,
        "n_patients": {name: len(ids) for name, ids in prepared.split.items()},
        "skipped": prepared.skipped,
        "training": training or {},
        "evaluation_precision": "float32",
        "thresholds": thresholds,
        "threshold_notes": threshold_notes,
        "slice_thresholds": slice_thresholds,
        "val": {"loss": val.loss, "scan_loss": val.scan_loss, "slice_loss": val.slice_loss,
                "patient": score_predictions(val.scan_labels, val.scan_probs, thresholds, n_boot=0)},
        "test": {
            "loss": test.loss, "scan_loss": test.scan_loss, "slice_loss": test.slice_loss,
            "patient": score_predictions(test.scan_labels, test.scan_probs, thresholds, **boot),
            "slice": score_predictions(y_sl, p_sl, slice_thresholds, groups=groups, level="slice", **boot),
            "probabilities": {pid: dict(zip(LABELS, map(float, row), strict=True))
                              for pid, row in zip(test.patient_ids, test.scan_probs, strict=True)},
        },
        "baseline": baseline,
    }


def _criterion(config: TrainConfig, prepared: PreparedData) -> ScanSliceLoss:
    if not config.pos_weight:
        return ScanSliceLoss(config.aux_weight)
    data, ids = prepared.data, prepared.split["train"]
    scan_y = np.stack([data.scan_labels(pid) for pid in ids])
    slice_y = np.concatenate([data.slice_labels(pid) for pid in ids])
    return ScanSliceLoss(config.aux_weight, pos_weight_from_labels(scan_y), pos_weight_from_labels(slice_y))


def _effective_monitor(config: TrainConfig, prepared: PreparedData) -> str:
    if config.monitor != "mean_auc":
        return config.monitor
    y = np.stack([prepared.data.scan_labels(pid) for pid in prepared.split["val"]])
    defined = ((y > 0.5).any(axis=0) & (y <= 0.5).any(axis=0)).any()
    if not defined:
        if config.progress:
            print("No label has both classes in validation, so mean AUC is undefined; "
                  "monitoring scan_loss instead.", flush=True)
        return "scan_loss"
    return "mean_auc"


def _check_resume(ckpt: dict, config: TrainConfig, split: dict, path: Path) -> None:
    saved = ckpt.get("config", {})
    now = config.to_dict()
    differs = [f"{k}: saved {saved.get(k)!r}, now {now[k]!r}" for k in now
               if k not in _RESUME_FREE and saved.get(k) != now[k]]
    if differs:
        raise ConfigError(f"{path}: cannot resume with different settings ({'; '.join(differs)}); "
                          "use the same settings or a new out_dir")
    if ckpt.get("split") != split:
        raise ConfigError(f"{path}: the patient split differs from the saved run's (the data "
                          "folder changed?); start a new run in a new out_dir")
    for key in ("optimizer", "lr_scheduler", "early_stopping", "rng", "history"):
        if key not in ckpt:
            raise ConfigError(f"{path}: has no {key!r}, so it is not a resumable last.pt")


def describe_batch(layout: dict, lr: float) -> str:
    """One line on the batch over processes (from :meth:`DistContext.describe`) and the lr."""
    world = layout["world_size"]
    return (f"batch {layout['global_batch_size']} scans per step (global) = "
            f"{layout['per_process_batch_size']} per process x {world} process{'es' if world > 1 else ''}"
            f"{'' if world == 1 else ' (' + layout['backend'] + ')'}; lr {lr:g}, scaling rule "
            f"{layout['lr_scaling']} (the global batch does not depend on the number of processes)")


def describe_amp(config: TrainConfig) -> str:
    """One line saying which device and precision ``config`` resolves to here."""
    device = resolve_device(config.device)
    dtype = resolve_amp(config.amp, device)
    name = {None: "float32", torch.bfloat16: "bfloat16 autocast", torch.float16: "float16 autocast"}[dtype]
    return f"{device.type}, {name}{', channels_last' if config.channels_last else ''}"


def json_safe(value: object) -> object:
    """Replace NaN and infinities by None (recursively), so the result is strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def steps_per_epoch(n_train: int, batch_size: int, max_train_batches: int | None = None) -> int:
    """Optimizer steps in one epoch."""
    steps = math.ceil(n_train / batch_size)
    return steps if max_train_batches is None else min(steps, max_train_batches)
