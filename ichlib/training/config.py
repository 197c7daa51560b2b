"""Everything that defines a training run, in one dataclass that every checkpoint stores."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ichlib.errors import ConfigError
from ichlib.losses import AUXILIARY_LOSS_WEIGHT
from ichlib.model import BACKBONES, DEFAULT_POOLING, POOLINGS
from ichlib.preprocess.dataset import PreprocessConfig
from ichlib.training.engine import MONITORS

#: What validation and test predictions read: every slice of a scan, or the S sampled ones.
EVAL_SLICES = ("all", "sampled")
#: Config fields that may differ when resuming (they do not change what is computed).
RESUME_FREE = frozenset({"data_dir", "out_dir", "cache_dir", "num_workers", "device", "progress",
                          "n_boot"})


@dataclass
class TrainConfig:
    """Everything that defines a training run. Stored in every checkpoint.

    Attributes:
        data_dir: CT-ICH folder.
        out_dir: Run folder for checkpoints, history and metrics.
        epochs: Training epochs.
        batch_size: Scans per optimizer step. Under ``torchrun`` this is the global batch,
            split evenly over the processes (see :mod:`ichlib.training.distributed`).
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
            or ``"slice_loss"`` (the slice-head BCE) or ``"slice_mean_auc"`` (the slice head's
            mean AUC over the validation slices; what ``two_stage`` uses for stage 1).
        num_workers: DataLoader worker processes (0 loads in the training process, which
            is fastest on a 2-core machine with the cache built).
        cache_dir: Resized-volume cache; None uses :func:`ichlib.io.cachedir.default_cache_dir`
            (``$ICHLIB_CACHE`` or ``~/.cache/ichlib``), shared by all runs: entries are keyed
            by scan file and image size, so two runs on the same data build it once.
        amp: ``"auto"`` (bf16 autocast on the CPU only where it is faster than float32:
            with AMX, or with AVX512-BF16 where a one-time measurement says so, see
            :func:`ichlib.device.bf16_pays_on_cpu`; bf16 or fp16 on CUDA; else
            fp32), ``"bf16"``, ``"fp16"`` (CUDA), or ``"off"``. Validation during training
            follows it; the final test evaluation is always float32.
        channels_last: Run the CNN in channels-last memory format.
        deterministic: Ask PyTorch for deterministic kernels (CPU runs are reproducible
            anyway; on CUDA a few kernels have no deterministic version and only warn).
        pos_weight: Weight positives by ``n_neg / n_pos`` from the training labels.
        skip_bad: Leave out patients whose files are broken (listed in metrics.json)
            instead of stopping.
        augment: Flip/rotate/shift/intensity augmentation of training scans.
        lstm_hidden: Hidden size of each LSTM direction.
        dropout: Dropout before the heads.
        pooling: How the BiLSTM's per-slice outputs become the scan's prediction (one of
            :data:`ichlib.model.POOLINGS`; ``"last"`` is the ablation of the former design).
        eval_slices: ``"all"``: validation and test scans are predicted from every slice
            (:func:`ichlib.preprocess.sampling.covering_indices` samplings, combined by
            :meth:`ichlib.model.CNNBiLSTM.forward_scan`); ``"sampled"``: from the ``S``
            uniformly sampled slices only (the former evaluation, for comparison).
        pretrained: Start from torchvision ImageNet weights (must be in the torch hub cache
            when offline).
        max_train_batches: Stop each training epoch after this many batches (smoke runs).
        n_boot: Bootstrap replicates for the test CIs.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ...
        progress: Show progress bars (also off when ``TQDM_DISABLE`` is set) and print one
            line per epoch.
        two_stage: Train in two stages (:mod:`ichlib.two_stage`): for ``epochs``, the CNN
            and slice head on single slices, half of them with blood (``aux_weight`` and
            ``monitor`` do not apply; the validation slice AUC picks the epoch); then the
            BiLSTM and scan head on cached embeddings of the frozen CNN.
        matched_fraction: In the slice task (``two_stage``'s stage 1 and the ``warmup_epochs``),
            the share of the slices without forced blood that is drawn at the heights of
            blood slices (:class:`~ichlib.training.two_stage.SliceSampler`), so that the CNN
            cannot tell blood from a slice's height; 0 draws them uniformly (the shortcut).
        warmup_epochs: The curriculum of end-to-end training: first train the CNN and the
            slice head on the slice task (``λ = 1``: single slices, half with blood, as
            stage 1 of ``two_stage``) for this many epochs, in ``OUT/warmup``; then train
            the whole model end to end for ``epochs`` from the best warm-up epoch. 0: end to
            end from the start (the CNN then often learns nothing in a CPU budget).
        init_from: Start the CNN and slice head from this checkpoint's weights (e.g. another
            run's ``stage1.pt`` or ``OUT/warmup/stage1.pt``) instead of a warm-up of their
            own; the sequence half starts fresh. End to end only.
        encoder_lr_scale: The CNN's learning rate as a multiple of ``lr`` in end-to-end
            training; None: 0.1 when the CNN is warm-started (``warmup_epochs`` or
            ``init_from``; at the full rate the fresh BiLSTM's gradients wipe out what the
            slice task taught), else 1.
        sequence_epochs: Epochs of that second stage (the cosine schedule's length; it
            stops early, see ``sequence_patience``).
        sequence_patience: The second stage stops after this many epochs without a lower
            validation scan loss. Was 40; on notebook 04's run (seed 0, five BiLSTMs) every
            patience from 10 to 40 kept the same epoch of each, and 20 runs about 35% fewer
            epochs.
        sequence_members: How many sequence halves (BiLSTM + scan head) the second stage of
            ``two_stage`` trains on the same cached embeddings, one after another, each with
            its own seed and its own epoch chosen on validation; the model averages their
            probabilities (:class:`~ichlib.model.CNNBiLSTM`). One run of stage 2 is noisy:
            on notebook 04's 30 validation patients its chosen epoch, and the test verdict,
            moved with float-level changes to the embeddings (docs/results.md). Each member
            costs one more stage 2 (about 12 s on a 2-core CPU at notebook 04's settings), so
            the default is the smallest average that is not a pair. End-to-end models have one.
        folds: ``K`` for a K-fold cross-validation by patient
            (:func:`ichlib.training.cv.cross_validate`, ``ichlib train --folds K``): every
            patient is tested once, by the model of the fold that did not train on it.
            ``test_fraction`` is then unused; ``val_fraction`` is the share of each fold's
            non-test patients kept for validation.
        fold: Which fold (0-based) this run is; set by ``cross_validate`` for each fold's
            run folder, with ``folds``.
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
    pooling: str = DEFAULT_POOLING
    eval_slices: str = "all"
    pretrained: bool = False
    max_train_batches: int | None = None
    n_boot: int = 1000
    device: str = "auto"
    progress: bool = True
    two_stage: bool = False
    matched_fraction: float = 0.5
    warmup_epochs: int = 0
    init_from: str | None = None
    encoder_lr_scale: float | None = None
    sequence_epochs: int = 150
    sequence_patience: int = 20
    sequence_members: int = 3
    folds: int | None = None
    fold: int | None = None

    def __post_init__(self) -> None:
        self.data_dir = str(self.data_dir)
        self.out_dir = str(self.out_dir)
        self.cache_dir = None if self.cache_dir is None else str(self.cache_dir)
        self.init_from = None if self.init_from is None else str(self.init_from)
        self.windows = PreprocessConfig(windows=self.windows).windows
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}")
        if self.eval_slices not in EVAL_SLICES:
            raise ConfigError(f"eval_slices must be one of {', '.join(EVAL_SLICES)}, got {self.eval_slices!r}")
        if self.monitor not in MONITORS:
            raise ConfigError(f"unknown monitor {self.monitor!r}; choose one of {', '.join(MONITORS)}")
        if not 0.0 <= self.aux_weight <= 1.0:
            raise ConfigError(f"aux_weight (λ) must be in [0, 1], got {self.aux_weight}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {self.amp!r}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be >= 1 or None, got {self.patience}")
        if not 0.0 <= self.matched_fraction <= 1.0:
            raise ConfigError(f"matched_fraction must be in [0, 1], got {self.matched_fraction}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.two_stage and (self.warmup_epochs or self.init_from):
            raise ConfigError("warmup_epochs and init_from are for end-to-end training; two_stage "
                              "trains the slice task in its own stage 1")
        if self.warmup_epochs and self.init_from:
            raise ConfigError("give warmup_epochs or init_from, not both")
        if self.encoder_lr_scale is not None and not self.encoder_lr_scale > 0:
            raise ConfigError(f"encoder_lr_scale must be > 0 or None, got {self.encoder_lr_scale}")
        if self.sequence_epochs < 1:
            raise ConfigError(f"sequence_epochs must be >= 1, got {self.sequence_epochs}")
        if self.sequence_patience < 1:
            raise ConfigError(f"sequence_patience must be >= 1, got {self.sequence_patience}")
        if self.sequence_members < 1:
            raise ConfigError(f"sequence_members must be >= 1, got {self.sequence_members}")
        if self.folds is not None and self.folds < 2:
            raise ConfigError(f"folds must be >= 2 (or None for one split), got {self.folds}")
        if self.fold is not None and (self.folds is None or not 0 <= self.fold < self.folds):
            raise ConfigError(f"fold must be in 0..folds-1 and needs folds, got fold={self.fold}, "
                              f"folds={self.folds}")
        PreprocessConfig(windows=self.windows, img_size=self.img_size, seq_len=self.seq_len)

    @property
    def warm_started(self) -> bool:
        """Whether end-to-end training starts from a CNN trained on the slice task."""
        return not self.two_stage and bool(self.warmup_epochs or self.init_from)

    @property
    def cnn_lr_scale(self) -> float:
        """The CNN's learning rate as a multiple of ``lr`` (see ``encoder_lr_scale``)."""
        if self.encoder_lr_scale is not None:
            return self.encoder_lr_scale
        return 0.1 if self.warm_started else 1.0

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
