"""The training loop's parts: early stopping and the one optimizer step."""

from __future__ import annotations

import pytest
import torch

from ichlib.errors import IchlibError
from ichlib.training.engine import EarlyStopping, optimizer_step


def test_early_stopping():
    tracker = EarlyStopping("scan_loss", patience=2)
    assert [tracker.update(s, e) for e, s in enumerate([0.9, 0.7, 0.8, 0.7], start=1)] == \
        [True, True, False, False]
    assert tracker.stopped and tracker.best_epoch == 2 and tracker.best_score == 0.7
    auc = EarlyStopping("mean_auc")
    assert auc.update(0.6, 1) and auc.update(0.7, 2) and not auc.update(0.65, 3) and not auc.stopped


def test_early_stopping_keeps_a_first_epoch_without_a_score_until_one_has_a_score():
    tracker = EarlyStopping("slice_mean_auc")
    assert [tracker.update(s, e) for e, s in enumerate([None, None, 0.6, None, 0.5], start=1)] == \
        [True, False, True, False, False]
    assert tracker.best_epoch == 3 and tracker.best_score == 0.6


def test_optimizer_step_refuses_a_nan_loss_before_changing_anything():
    layer = torch.nn.Linear(2, 1)
    before = [p.detach().clone() for p in layer.parameters()]
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    loss = layer(torch.tensor([[float("nan"), 1.0]])).sum()
    with pytest.raises(IchlibError, match="non-finite training loss at epoch 3"):
        optimizer_step(loss, optimizer, scheduler=scheduler, where="at epoch 3")
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=True))
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_optimizer_step_steps_the_optimizer_and_the_scheduler():
    layer = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.ones_(layer.weight)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    optimizer_step(layer(torch.tensor([[1.0, 2.0]])).sum(), optimizer, scheduler=scheduler)
    torch.testing.assert_close(layer.weight.detach(), torch.tensor([[0.9, 0.8]]))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    optimizer_step(layer(torch.tensor([[1.0, 0.0]])).sum(), optimizer)   # no scheduler: lr stays
    torch.testing.assert_close(layer.weight.detach(), torch.tensor([[0.85, 0.8]]))
