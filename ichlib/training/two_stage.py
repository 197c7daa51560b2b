"""Two-stage training: the slice CNN first, then the BiLSTM on cached slice embeddings.

The top RSNA 2019 solutions trained their sequence models this way. End to end, every
optimizer step runs the CNN over ``B x S`` slices of a few scans, most of them normal, and
the scan-level loss reaches the CNN only through the LSTM; on a small dataset neither head
learns much in the epochs a CPU allows (see notebook 04). In two stages:

1. :class:`SliceStage` trains the CNN and the slice head as a slice classifier:
   batches of single slices drawn from every slice of the training scans, half of them
   (``positive_fraction``) from slices with blood, each augmented on its own. The budget
   is the end-to-end one: ``epochs x n_train_scans x S`` slices. The epoch with the
   best validation slice AUC is kept (the slice loss where validation has no blood);
2. :func:`embed_scans` runs the frozen CNN once over every slice of every scan (no
   augmentation) and keeps the embeddings in memory (``F`` floats per slice: 512 for
   ResNet-18, so 75 scans of 45 slices take 7 MB);
3. :func:`train_sequence_stage` trains the LayerNorm, BiLSTM and scan head on sequences of
   ``S`` embeddings drawn from the cache with the same jittered uniform sampling as
   end-to-end training. A step costs milliseconds, so hundreds of epochs take seconds.

The result is an ordinary :class:`~ichlib.model.CNNBiLSTM` whose CNN and slice head come
from stage 1 and whose sequence half comes from stage 2: prediction, Grad-CAM and the
checkpoint format do not change.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ichlib.device import autocast
from ichlib.errors import ConfigError, IchlibError
from ichlib.model import CNNBiLSTM
from ichlib.preprocess.augment import ScanAugment
from ichlib.preprocess.dataset import ScanDataset, sequence_labels, to_model_input
from ichlib.preprocess.sampling import covering_indices, uniform_indices
from ichlib.training.engine import EarlyStopping, make_optimizer, optimizer_step
from ichlib.training.log import QUIET, RunLog


@dataclass
class SliceStageConfig:
    """Settings of stage 1 (the CNN as a slice classifier).

    Attributes:
        epochs: Budget in end-to-end epochs: each epoch trains on ``n_train_scans x
            seq_len`` slices, as many as an end-to-end epoch, in ``steps_per_epoch``
            optimizer steps.
        batch_size: Slices per step.
        positive_fraction: Share of each batch drawn from slices labelled ``any``
            (the rest from all slices); None draws uniformly.
        matched_fraction: Share of the rest drawn at the *heights* of slices with blood
            (:class:`SliceSampler`): without it, most negatives come from the top and bottom
            of the head, where no blood is, and the CNN can learn the slice's height instead
            of the blood (the shortcut audit of notebook 04). 0 draws the rest uniformly.
        lr: Peak AdamW learning rate of a one-cycle schedule (10% warm-up, cosine decay).
        weight_decay: AdamW weight decay.
        seed: Seed of the slice draws and the augmentation.
    """

    epochs: int = 10
    batch_size: int = 32
    positive_fraction: float | None = 0.5
    matched_fraction: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("slice-stage epochs and batch_size must be >= 1")
        if self.positive_fraction is not None and not 0.0 <= self.positive_fraction <= 1.0:
            raise ConfigError(f"positive_fraction must be in [0, 1] or None, got {self.positive_fraction}")
        if not 0.0 <= self.matched_fraction <= 1.0:
            raise ConfigError(f"matched_fraction must be in [0, 1], got {self.matched_fraction}")


class SliceSampler:
    """Draws batches of slice addresses ``(patient, slice index)`` from a set of scans.

    A batch has three parts: positives (slices with ``any`` = 1), *height-matched* slices
    and uniform slices. A height-matched slice is drawn by taking the relative height
    ``(k + 0.5) / N`` of a random positive slice and the slice at that height in a random
    scan, so its height follows the height distribution of blood, and height alone no
    longer tells it from a positive.

    Args:
        labels: ``{patient_id: [N_slices, 6]}`` slice labels (column 0 is ``any``).
        positive_fraction: Share of each batch drawn from slices with ``any`` = 1
            (None, or no positive slice at all: uniform over every slice).
        rng: Random generator.
        matched_fraction: Share of the non-positive part drawn height-matched (needs
            positive slices; 0: all uniform).
    """

    def __init__(self, labels: Mapping[str, np.ndarray], positive_fraction: float | None,
                 rng: np.random.Generator, matched_fraction: float = 0.0) -> None:
        self.addresses = [(pid, k) for pid, y in labels.items() for k in range(len(y))]
        if not self.addresses:
            raise ConfigError("no slices to train on")
        self.positives = [i for i, (pid, k) in enumerate(self.addresses) if labels[pid][k, 0] > 0.5]
        self.positive_fraction = positive_fraction if self.positives else None
        self.matched_fraction = matched_fraction if self.positives else 0.0
        self.scans = [(pid, len(y)) for pid, y in labels.items()]
        self._heights = np.array([(self.addresses[i][1] + 0.5) / len(labels[self.addresses[i][0]])
                                  for i in self.positives])
        self.rng = rng

    def draw(self, n: int) -> list[tuple[str, int]]:
        """``n`` addresses: ``round(n * positive_fraction)`` positives, then
        ``round(rest * matched_fraction)`` height-matched, the rest uniform."""
        n_pos = 0 if self.positive_fraction is None else int(round(n * self.positive_fraction))
        n_matched = int(round((n - n_pos) * self.matched_fraction))
        picks = list(self.rng.choice(len(self.positives), n_pos)) if n_pos else []
        chosen = [self.addresses[self.positives[i]] for i in picks]
        chosen += self.matched(n_matched)
        chosen += [self.addresses[i] for i in self.rng.integers(0, len(self.addresses), n - n_pos - n_matched)]
        return chosen

    def matched(self, n: int) -> list[tuple[str, int]]:
        """``n`` addresses at the relative heights of random positive slices, in random scans."""
        if n == 0:
            return []
        heights = self._heights[self.rng.integers(0, len(self._heights), n)]
        scans = [self.scans[i] for i in self.rng.integers(0, len(self.scans), n)]
        return [(pid, min(int(h * size), size - 1)) for h, (pid, size) in zip(heights, scans, strict=True)]


class SliceStage:
    """Stage 1: trains the CNN and slice head of ``model`` in place as a slice classifier.

    The sequence half gets no gradient. Batches come from :class:`SliceSampler` over every
    slice of ``train`` (its cached, resized volumes); each slice is augmented on its own.
    Epoch ``e`` draws from a generator seeded by ``(seed, e)``, so a run resumed after
    epoch ``e`` (model, :attr:`optimizer` and :attr:`scheduler` restored) continues exactly.

    Args:
        model: The model (its encoder and slice head are trained).
        train: Training scans.
        config: Stage settings.
        steps_per_epoch: Optimizer steps per epoch.
        device: Where to train.
        amp_dtype: Autocast dtype for the CNN (None: float32).
        augment: Augmentation applied to each slice (None: none).
        pos_weight: Optional ``[6]`` weight of positives in the slice BCE.

    Attributes:
        optimizer: AdamW over the encoder and slice head.
        scheduler: One-cycle schedule over ``epochs * steps_per_epoch`` steps.
    """

    def __init__(self, model: CNNBiLSTM, train: ScanDataset, config: SliceStageConfig,
                 steps_per_epoch: int, device: torch.device, amp_dtype: torch.dtype | None = None,
                 augment: ScanAugment | None = None, pos_weight: torch.Tensor | None = None) -> None:
        if steps_per_epoch < 1:
            raise ConfigError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.model, self.train, self.config = model, train, config
        self.steps_per_epoch, self.device, self.amp_dtype, self.augment = steps_per_epoch, device, amp_dtype, augment
        self.weight = None if pos_weight is None else pos_weight.to(device)
        self.labels = {pid: train.data.slice_labels(pid) for pid in train.patient_ids}
        self.volumes = {pid: train.resized_volume(pid) for pid in train.patient_ids}  # memory-mapped
        params = [*model.encoder.parameters(), *model.slice_head.parameters()]
        self.optimizer = make_optimizer(params, config.lr, config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.1)

    def train_epoch(self, epoch: int, log: RunLog = QUIET) -> dict[str, float]:
        """Train for one epoch (0-based ``epoch``).

        Returns:
            ``loss`` and ``slice_loss`` (the mean slice BCE), ``seconds`` and
            ``slices_per_s``.

        Raises:
            IchlibError: On a non-finite loss.
        """
        model = self.model
        model.train()
        rng = np.random.default_rng([self.config.seed, 1, epoch])
        sampler = SliceSampler(self.labels, self.config.positive_fraction, rng, self.config.matched_fraction)
        start, total = time.perf_counter(), 0.0
        for _ in log.bar(range(self.steps_per_epoch), desc=f"epoch {epoch + 1} slices"):
            addresses = sampler.draw(self.config.batch_size)
            x = self.batch(addresses, rng)
            y = torch.from_numpy(np.stack([self.labels[pid][k] for pid, k in addresses]))
            x, y = x.to(self.device), y.to(self.device)
            with autocast(self.device, self.amp_dtype):
                embeddings = model.embed(x)
            logits = model.slice_head(model.dropout(embeddings.float()))
            loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=self.weight)
            optimizer_step(loss, self.optimizer, scheduler=self.scheduler,
                           where=f"in stage 1 at epoch {epoch + 1}")
            total += loss.item()
        seconds = time.perf_counter() - start
        mean = total / self.steps_per_epoch
        return {"loss": mean, "slice_loss": mean, "seconds": seconds,
                "slices_per_s": self.steps_per_epoch * self.config.batch_size / seconds if seconds > 0 else 0.0}

    def batch(self, addresses: Sequence[tuple[str, int]], rng: np.random.Generator) -> torch.Tensor:
        """Windowed (and augmented) slices ``[N, C, H, W]`` at ``(patient, index)`` addresses."""
        hu = np.stack([np.asarray(self.volumes[pid][k], dtype=np.float32) for pid, k in addresses])
        x = to_model_input(hu, self.train.config.windows)
        return x if self.augment is None else self.augment.each(x, rng)


@dataclass
class SequenceStageConfig:
    """Settings of stage 2 (the sequence model on cached embeddings).

    Attributes:
        epochs: Passes over the training scans.
        batch_size: Scans per step.
        lr: AdamW learning rate (peak of a cosine schedule over all steps).
        weight_decay: AdamW weight decay.
        patience: Stop after this many epochs without a lower validation scan loss
            (None: never).
        reset: Re-initialise the sequence half before training instead of starting from
            the stage-1 weights.
        seed: Seed of the shuffling and of the slice jitter.
    """

    epochs: int = 150
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-2
    patience: int | None = 40
    reset: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("sequence-stage epochs and batch_size must be >= 1")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"sequence-stage patience must be >= 1 or None, got {self.patience}")


@dataclass
class SequenceStageResult:
    """What :func:`train_sequence_stage` did.

    Attributes:
        history: One dict per epoch: ``epoch``, ``train_scan_loss``, ``val_scan_loss``,
            ``best``.
        best_epoch: The epoch whose weights were kept (lowest validation scan loss).
        best_val_scan_loss: Its validation scan loss.
        seconds: Wall time of the stage, embedding excluded.
    """

    history: list[dict]
    best_epoch: int
    best_val_scan_loss: float
    seconds: float


def embed_scans(model: CNNBiLSTM, dataset: ScanDataset, device: torch.device,
                amp_dtype: torch.dtype | None = None, chunk: int = 64,
                log: RunLog = QUIET) -> dict[str, torch.Tensor]:
    """Embed every slice of every scan of ``dataset`` with the model's CNN (eval mode).

    Args:
        model: The trained model; only ``encoder`` is used.
        dataset: Scans to embed (its augmentation is not applied).
        device: Where the CNN runs.
        amp_dtype: Autocast dtype for the CNN (None: float32).
        chunk: Slices per forward pass.
        log: Where the progress bar goes.

    Returns:
        ``{patient_id: float32 [N_slices, F]}`` on the CPU, slices in scan order.
    """
    was_training = model.training
    model.eval()
    out: dict[str, torch.Tensor] = {}
    try:
        with torch.inference_mode():
            for pid in log.bar(dataset.patient_ids, desc="embed"):
                volume = dataset.resized_volume(pid)
                parts = []
                for start in range(0, volume.shape[0], chunk):
                    x = to_model_input(np.asarray(volume[start:start + chunk], dtype=np.float32),
                                       dataset.config.windows).to(device)
                    with autocast(device, amp_dtype):
                        parts.append(model.embed(x).float().cpu())
                emb = torch.cat(parts)
                if not torch.isfinite(emb).all():
                    raise IchlibError(f"non-finite slice embedding for patient {pid}")
                out[pid] = emb
    finally:
        model.train(was_training)
    return out


def sample_sequences(embeddings: Mapping[str, torch.Tensor], patient_ids: Sequence[str], seq_len: int,
                     jitter: bool, rng: np.random.Generator) -> torch.Tensor:
    """Stack ``S`` embeddings per patient, chosen by :func:`uniform_indices`: ``[B, S, F]``."""
    return gather_sequences(embeddings, patient_ids, draw_indices(embeddings, patient_ids, seq_len, jitter, rng))


def draw_indices(embeddings: Mapping[str, torch.Tensor], patient_ids: Sequence[str], seq_len: int,
                 jitter: bool, rng: np.random.Generator) -> list[np.ndarray]:
    """``S`` slice indices per patient (:func:`uniform_indices`), in ``patient_ids`` order."""
    return [uniform_indices(embeddings[pid].shape[0], seq_len, jitter=jitter, rng=rng) for pid in patient_ids]


def gather_sequences(embeddings: Mapping[str, torch.Tensor], patient_ids: Sequence[str],
                     indices: Sequence[np.ndarray]) -> torch.Tensor:
    """The embeddings at ``indices`` of each patient, stacked: ``[B, S, F]``."""
    return torch.stack([embeddings[pid][torch.from_numpy(np.asarray(idx))]
                        for pid, idx in zip(patient_ids, indices, strict=True)])


def covering_logits(model: CNNBiLSTM, embeddings: Mapping[str, torch.Tensor], patient_ids: Sequence[str],
                    seq_len: int, device: torch.device | None = None, member: int | None = None) -> torch.Tensor:
    """Patient-level logits ``[B, 6]`` from every slice of each scan, as prediction computes
    them: the sequence half reads the :func:`~ichlib.sampling.covering_indices` samplings of
    each scan, and each label takes the largest logit over a scan's samplings. ``member``:
    one sequence half alone (None: the model's average, as prediction)."""
    samplings = [covering_indices(embeddings[pid].shape[0], seq_len) for pid in patient_ids]
    owners = [pid for pid, rows in zip(patient_ids, samplings, strict=True) for _ in rows]
    x = gather_sequences(embeddings, owners, [row for rows in samplings for row in rows])
    logits = model.sequence_logits(x.to(device) if device is not None else x, member=member)
    bounds = np.cumsum([0] + [len(rows) for rows in samplings])
    return torch.stack([logits[a:b].amax(dim=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


def sequence_parameters(model: CNNBiLSTM, reset: bool = False, member: int = 0) -> list[torch.nn.Parameter]:
    """The parameters stage 2 trains in sequence half ``member``: the LSTM's LayerNorm, the
    BiLSTM, the scan head and, with attention pooling, the attention scorer
    (:meth:`CNNBiLSTM.sequence_modules`), re-initialised first when ``reset``."""
    if reset:
        for module in (m for top in model.sequence_modules(member) for m in top.modules()):
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return [p for module in model.sequence_modules(member) for p in module.parameters()]


def train_sequence_stage(model: CNNBiLSTM, embeddings: Mapping[str, torch.Tensor],
                         scan_labels: Mapping[str, np.ndarray], train_ids: Sequence[str],
                         val_ids: Sequence[str], seq_len: int,
                         config: SequenceStageConfig | None = None, device: torch.device | None = None,
                         pos_weight: torch.Tensor | None = None, log: RunLog = QUIET,
                         slice_labels: Mapping[str, np.ndarray] | None = None, member: int = 0) -> SequenceStageResult:
    """Train one sequence half of ``model`` in place on cached embeddings (stage 2).

    The CNN, the slice head and the other sequence halves are not touched. Each epoch draws
    one jittered sequence of ``seq_len`` slices per training scan; validation reads every
    slice of each scan, as prediction does (:func:`covering_logits`), with this half alone.
    The weights of the epoch with the lowest validation scan loss are loaded into ``model``
    at the end.

    Args:
        model: Model whose CNN produced ``embeddings``.
        embeddings: ``{patient_id: [N_slices, F]}`` from :func:`embed_scans`.
        scan_labels: ``{patient_id: [6]}`` patient-level labels.
        train_ids, val_ids: Patients to train on and to select the epoch on.
        seq_len: ``S``, as in stage 1.
        config: Stage settings (defaults if None).
        device: Where to train (the model's device if None).
        pos_weight: Optional ``[6]`` weight of positives in the BCE.
        log: Prints a line every 25 epochs.
        slice_labels: ``{patient_id: [N_slices, 6]}``; when given, the target of each
            training sequence is the OR of its sampled slices' labels
            (:func:`ichlib.preprocess.dataset.sequence_labels`), as in end-to-end training,
            instead of the patient's label. Validation always uses the patient's label.
        member: Which sequence half to train; its draws are seeded by ``(seed, 2, member)``
            (member 0: ``(seed, 2)``).

    Raises:
        ConfigError: If a split is empty or a patient has no embedding.
        IchlibError: On a non-finite loss.
    """
    config = config or SequenceStageConfig()
    device = device or next(model.parameters()).device
    _check_stage_inputs(embeddings, train_ids, val_ids)
    params = sequence_parameters(model, reset=config.reset, member=member)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * -(-len(train_ids) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    weight = None if pos_weight is None else pos_weight.to(device)
    y = {pid: torch.as_tensor(np.asarray(scan_labels[pid]), dtype=torch.float32) for pid in [*train_ids, *val_ids]}
    val_y = _targets(y, None, val_ids, []).to(device)
    rng = np.random.default_rng([config.seed, 2] if member == 0 else [config.seed, 2, member])
    history: list[dict] = []
    tag = f"stage 2 member {member + 1}/{model.sequence_members}" if model.sequence_members > 1 else "stage 2"
    tracker, best_state, start = EarlyStopping("scan_loss", config.patience), None, time.perf_counter()
    with _frozen_except(model, params):
        for epoch in range(config.epochs):
            model.train()
            train_loss = 0.0
            order = [train_ids[j] for j in rng.permutation(len(train_ids))]
            for i in range(0, len(order), config.batch_size):
                ids = order[i:i + config.batch_size]
                indices = draw_indices(embeddings, ids, seq_len, True, rng)
                logits = model.sequence_logits(gather_sequences(embeddings, ids, indices).to(device), member=member)
                loss = F.binary_cross_entropy_with_logits(logits, _targets(y, slice_labels, ids, indices).to(device),
                                                          pos_weight=weight)
                optimizer_step(loss, optimizer, scheduler=scheduler, where=f"in stage 2 at epoch {epoch + 1}")
                train_loss += loss.item() * len(ids) / len(order)
            model.eval()
            with torch.inference_mode():
                val_logits = covering_logits(model, embeddings, val_ids, seq_len, device, member=member)
                val_loss = F.binary_cross_entropy_with_logits(val_logits, val_y, pos_weight=weight).item()
            improved = tracker.update(val_loss, epoch + 1)
            if improved:
                best_state = [p.detach().clone() for p in params]
            history.append({"epoch": epoch + 1, "train_scan_loss": train_loss, "val_scan_loss": val_loss, "best": improved})
            if (epoch + 1) % 25 == 0 or epoch == 0:
                log.info(f"{tag} epoch {epoch + 1}/{config.epochs}  train scan loss {train_loss:.4f}  "
                         f"val scan loss {val_loss:.4f}  (best {tracker.best_score:.4f} at {tracker.best_epoch})")
            if tracker.stopped:
                break
    with torch.no_grad():
        for p, best in zip(params, best_state, strict=True):
            p.copy_(best)
    return SequenceStageResult(history=history, best_epoch=tracker.best_epoch, best_val_scan_loss=tracker.best_score,
                               seconds=time.perf_counter() - start)


def _targets(scan_labels: Mapping[str, torch.Tensor], slice_labels: Mapping[str, np.ndarray] | None,
             ids: Sequence[str], indices: Sequence[np.ndarray]) -> torch.Tensor:
    """Each sequence's target: the patient's labels, or the OR of its sampled slices' labels."""
    if slice_labels is None:
        return torch.stack([scan_labels[pid] for pid in ids])
    return torch.stack([torch.from_numpy(sequence_labels(slice_labels[pid][idx]))
                        for pid, idx in zip(ids, indices, strict=True)])


def _check_stage_inputs(embeddings: Mapping[str, torch.Tensor], train_ids: Sequence[str],
                        val_ids: Sequence[str]) -> None:
    if not train_ids or not val_ids:
        raise ConfigError("stage 2 needs training and validation patients")
    missing = [pid for pid in [*train_ids, *val_ids] if pid not in embeddings]
    if missing:
        raise ConfigError(f"no cached embedding for patient(s) {', '.join(missing[:5])}")


@contextlib.contextmanager
def _frozen_except(model: nn.Module, trainable: Sequence[nn.Parameter]) -> Iterator[None]:
    """Every parameter of ``model`` but ``trainable`` has ``requires_grad=False`` inside."""
    frozen = [p for p in model.parameters() if all(p is not q for q in trainable)]
    flags = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(frozen, flags, strict=True):
            p.requires_grad_(flag)
