"""Cascading randomisation (Adebayo et al. 2018): top down, reproducible, the original untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ichlib.errors import ConfigError
from ichlib.explain.randomization import cascading_randomization, randomization_stages
from tests.conftest import ToyBiLSTM


def test_randomization_stages_of_the_real_model():
    from ichlib.model import CNNBiLSTM

    stages = randomization_stages(CNNBiLSTM("resnet18", lstm_hidden=8))
    # top down: the scan head, the LSTM and the LayerNorm that feeds it, the slice head, then the CNN
    assert stages[:4] == ["scan_head", "lstm", "lstm_norm", "slice_head"]
    assert stages[4:8] == ["encoder.layer4.1", "encoder.layer4.0", "encoder.layer3.1",
                           "encoder.layer3.0"]
    assert stages[-2:] == ["encoder.bn1", "encoder.conv1"]
    assert len(stages) == 4 + 8 + 2


def test_cascading_randomization_goes_top_down_and_leaves_the_original():
    torch.manual_seed(0)
    model = ToyBiLSTM(downsamplings=2).eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    stages = randomization_stages(model)
    assert stages == ["scan_head", "lstm", "slice_head", "encoder.3.0", "encoder.2.0", "encoder.0"]

    def changed(m: nn.Module) -> set[str]:
        sd = m.state_dict()
        return {k.rsplit(".", 1)[0] for k in sd if not torch.equal(sd[k], original[k])}

    assert changed(cascading_randomization(model, 0)) == set()
    assert changed(cascading_randomization(model, 1)) == {"scan_head"}
    assert changed(cascading_randomization(model, "lstm")) == {"scan_head", "lstm"}
    every = cascading_randomization(model, "all")
    assert changed(every) == {"scan_head", "lstm", "slice_head", "encoder.3.0", "encoder.2.0",
                              "encoder.0"}
    assert not every.training                                        # mode kept
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    again = cascading_randomization(model, "all")                    # seeded: reproducible
    assert all(torch.equal(a, b) for a, b in zip(every.parameters(), again.parameters()))
    state = torch.random.get_rng_state()
    cascading_randomization(model, "all", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)          # global RNG untouched
    with pytest.raises(ConfigError):
        cascading_randomization(model, "decoder")
    with pytest.raises(ConfigError):
        cascading_randomization(model, 7)
