"""The joint loss against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ichlib.errors import ConfigError
from ichlib.losses import AUXILIARY_LOSS_WEIGHT, ScanSliceLoss, pos_weight_from_labels
from ichlib.model import ModelOutput


def bce(logit: float, y: float, pos_weight: float = 1.0) -> float:
    """-[w y log σ(z) + (1 - y) log(1 - σ(z))], written out."""
    p = 1.0 / (1.0 + math.exp(-logit))
    return -(pos_weight * y * math.log(p) + (1.0 - y) * math.log(1.0 - p))


def example() -> tuple[ModelOutput, torch.Tensor, torch.Tensor]:
    # B = 1, S = 2, six labels.
    scan_logits = torch.tensor([[2.0, -1.0, 0.0, 0.5, -3.0, 1.0]])
    slice_logits = torch.tensor([[[1.0, 0.0, -2.0, 0.0, 0.0, 3.0],
                                  [-1.0, 2.0, 0.0, 1.0, -1.0, 0.0]]])
    scan_y = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0, 1.0]])
    slice_y = torch.tensor([[[1.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                             [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]]])
    return ModelOutput(scan_logits, slice_logits), scan_y, slice_y


def hand_parts(pos_scan=None, pos_slice=None) -> tuple[float, float]:
    out, scan_y, slice_y = example()
    pos_scan = pos_scan or [1.0] * 6
    pos_slice = pos_slice or [1.0] * 6
    scan = sum(bce(out.scan_logits[0, j].item(), scan_y[0, j].item(), pos_scan[j]) for j in range(6)) / 6
    slice_ = sum(bce(out.slice_logits[0, s, j].item(), slice_y[0, s, j].item(), pos_slice[j])
                 for s in range(2) for j in range(6)) / 12
    return scan, slice_


def test_default_weight_is_one_half():
    assert AUXILIARY_LOSS_WEIGHT == 0.5
    assert ScanSliceLoss().aux_weight == 0.5


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 1.0])
def test_loss_matches_the_formula(lam):
    out, scan_y, slice_y = example()
    scan, slice_ = hand_parts()
    parts = ScanSliceLoss(lam)(out, scan_y, slice_y)
    assert parts.scan.item() == pytest.approx(scan, rel=1e-6)
    assert parts.slice.item() == pytest.approx(slice_, rel=1e-6)
    assert parts.total.item() == pytest.approx((1 - lam) * scan + lam * slice_, rel=1e-6)


def test_a_worked_number():
    # One scan label with logit 0 and target 1, one slice label with logit 0 and target 0:
    # both BCEs are log 2, so the total is log 2 for every λ.
    out = ModelOutput(torch.zeros(1, 6), torch.zeros(1, 1, 6))
    parts = ScanSliceLoss(0.3)(out, torch.ones(1, 6), torch.zeros(1, 1, 6))
    assert parts.total.item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_pos_weight_enters_as_a_factor_on_positives():
    out, scan_y, slice_y = example()
    w_scan = [2.0, 1.0, 3.0, 0.5, 1.0, 4.0]
    w_slice = [1.5, 1.0, 1.0, 2.0, 1.0, 1.0]
    scan, slice_ = hand_parts(w_scan, w_slice)
    parts = ScanSliceLoss(0.5, torch.tensor(w_scan), torch.tensor(w_slice))(out, scan_y, slice_y)
    assert parts.scan.item() == pytest.approx(scan, rel=1e-6)
    assert parts.slice.item() == pytest.approx(slice_, rel=1e-6)


def test_scan_weights_give_a_weighted_sum_of_the_scans_own_losses():
    gen = torch.Generator().manual_seed(0)
    out = ModelOutput(torch.randn(3, 6, generator=gen), torch.randn(3, 4, 6, generator=gen))
    scan_y = (torch.rand(3, 6, generator=gen) > 0.5).float()
    slice_y = (torch.rand(3, 4, 6, generator=gen) > 0.5).float()
    loss = ScanSliceLoss(0.3, torch.rand(6, generator=gen) + 0.5, torch.rand(6, generator=gen) + 0.5)
    mean = loss(out, scan_y, slice_y)
    even = loss(out, scan_y, slice_y, torch.full((3,), 1.0 / 3))
    for got, want in zip(even, mean, strict=True):  # weights 1 / B: the mean
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # weight 0 leaves a scan out, weight 2 counts one twice: a sum of the scans' own losses
    weight = [2.0, 0.0, 1.0]
    weighted = loss(out, scan_y, slice_y, torch.tensor(weight))
    alone = [loss(ModelOutput(out.scan_logits[i:i + 1], out.slice_logits[i:i + 1]), scan_y[i:i + 1],
                  slice_y[i:i + 1]) for i in range(3)]
    for part in range(3):
        expected = sum(w * alone[i][part].item() for i, w in enumerate(weight))
        assert weighted[part].item() == pytest.approx(expected, rel=1e-6)


def test_pos_weight_from_labels():
    labels = np.zeros((10, 6))
    labels[:2, 0] = 1    # 2 positives, 8 negatives -> 4
    labels[:5, 1] = 1    # 5 / 5 -> 1
    labels[:, 2] = 1     # no negatives -> 1
    labels[:1, 3] = 1    # 1 / 9 -> 9, capped at 5
    # label 4: no positives -> 1; label 5 as label 3
    labels[:1, 5] = 1
    weight = pos_weight_from_labels(labels, max_weight=5.0)
    assert weight.dtype == torch.float32
    np.testing.assert_allclose(weight.numpy(), [4.0, 1.0, 1.0, 5.0, 1.0, 5.0])
    # Slice labels [B, S, 6] are flattened.
    assert pos_weight_from_labels(labels.reshape(2, 5, 6)).shape == (6,)


def test_weight_zero_leaves_the_slice_head_without_gradient():
    slice_logits = torch.zeros(1, 2, 6, requires_grad=True)
    scan_logits = torch.zeros(1, 6, requires_grad=True)
    parts = ScanSliceLoss(0.0)(ModelOutput(scan_logits, slice_logits), torch.ones(1, 6), torch.ones(1, 2, 6))
    parts.total.backward()
    assert slice_logits.grad.abs().sum() == 0 and scan_logits.grad.abs().sum() > 0
    assert parts.slice.item() > 0  # still computed, for the history


def test_bad_weight_is_refused():
    with pytest.raises(ConfigError, match="aux_weight"):
        ScanSliceLoss(1.5)
