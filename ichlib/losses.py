"""The training loss: patient-level BCE plus the auxiliary slice-level BCE.

``loss = (1 - λ) * BCE(scan_logits, scan_labels) + λ * BCE(slice_logits, slice_labels)``

Each BCE is ``torch.nn.functional.binary_cross_entropy_with_logits`` averaged over all its
elements (``B * 6`` for the scan part, ``B * S * 6`` for the slice part), optionally with a
per-label ``pos_weight``. ``λ`` is :data:`AUXILIARY_LOSS_WEIGHT` by default; ``λ = 0``
trains the scan head alone (the slice part is still computed, for logging).

With per-scan weights ``w`` (a batch may carry them under :data:`LOSS_WEIGHT_KEY`), each BCE
is instead the weighted sum ``Σ_i w_i ℓ_i`` of the scans' own means ``ℓ_i``: weights ``1 / B``
give the mean, weight 0 leaves a scan out. A loader sets them when a batch is a share of a
larger one, e.g. a process's share of the global batch under ``torchrun``
(:func:`ichlib.training.loaders.make_train_loader`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ichlib.errors import ConfigError
from ichlib.model import ModelOutput

#: Default weight λ of the slice-level (auxiliary) loss.
AUXILIARY_LOSS_WEIGHT = 0.5
#: Batch key of optional per-scan loss weights (see the module docstring).
LOSS_WEIGHT_KEY = "loss_weight"


class LossParts(NamedTuple):
    """The total loss and its two parts (scalars; ``total`` carries the gradient)."""

    total: torch.Tensor
    scan: torch.Tensor
    slice: torch.Tensor


class ScanSliceLoss(nn.Module):
    """``(1 - λ)`` times the scan-level BCE plus ``λ`` times the slice-level BCE.

    Args:
        aux_weight: ``λ`` in [0, 1].
        scan_pos_weight: Optional ``[6]`` weight of positives in the scan BCE (see
            :func:`pos_weight_from_labels`); None weighs positives and negatives alike.
        slice_pos_weight: The same for the slice BCE (slice prevalence differs from patient
            prevalence, so compute it from slice labels).
    """

    def __init__(self, aux_weight: float = AUXILIARY_LOSS_WEIGHT,
                 scan_pos_weight: torch.Tensor | None = None,
                 slice_pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        if not 0.0 <= aux_weight <= 1.0:
            raise ConfigError(f"aux_weight (λ) must be in [0, 1], got {aux_weight}")
        self.aux_weight = float(aux_weight)
        self.register_buffer("scan_pos_weight", _as_weight(scan_pos_weight), persistent=False)
        self.register_buffer("slice_pos_weight", _as_weight(slice_pos_weight), persistent=False)

    def forward(self, output: ModelOutput, scan_labels: torch.Tensor, slice_labels: torch.Tensor,
                weight: torch.Tensor | None = None) -> LossParts:
        """Compute the loss.

        Args:
            output: The model's logits (``[B, 6]`` and ``[B, S, 6]``).
            scan_labels: ``[B, 6]`` 0/1 targets.
            slice_labels: ``[B, S, 6]`` 0/1 targets for the sampled slices.
            weight: Optional ``[B]`` per-scan weights: each part is then ``Σ_i w_i ℓ_i``
                instead of the mean.
        """
        reduction = "mean" if weight is None else "none"
        scan = F.binary_cross_entropy_with_logits(
            output.scan_logits.float(), scan_labels.float(), pos_weight=self.scan_pos_weight,
            reduction=reduction)
        slice_ = F.binary_cross_entropy_with_logits(
            output.slice_logits.float(), slice_labels.float(), pos_weight=self.slice_pos_weight,
            reduction=reduction)
        if weight is not None:
            w = weight.to(scan)
            scan, slice_ = (w * scan.mean(dim=1)).sum(), (w * slice_.mean(dim=(1, 2))).sum()
        total = (1.0 - self.aux_weight) * scan + self.aux_weight * slice_
        return LossParts(total=total, scan=scan, slice=slice_)


def pos_weight_from_labels(labels: np.ndarray | torch.Tensor, max_weight: float = 100.0) -> torch.Tensor:
    """Per-label ``n_negative / n_positive`` from a training label matrix.

    Args:
        labels: ``[N, 6]`` (or ``[..., 6]``, flattened) 0/1 labels of the training set only.
        max_weight: Upper clip, so a label with one positive in thousands cannot dominate.

    Returns:
        float32 ``[6]``. A label with no positives (or no negatives) gets weight 1.
    """
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float64).reshape(-1, np.shape(labels)[-1])
    pos = y.sum(dim=0)
    neg = y.shape[0] - pos
    weight = torch.where((pos > 0) & (neg > 0), neg / pos.clamp(min=1), torch.ones_like(pos))
    return weight.clamp(max=max_weight).float()


def _as_weight(weight: torch.Tensor | np.ndarray | None) -> torch.Tensor | None:
    return None if weight is None else torch.as_tensor(np.asarray(weight), dtype=torch.float32)
