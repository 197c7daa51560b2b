"""Device and precision: which autocast dtype each setting gives on this machine."""

from __future__ import annotations

import pytest
import torch

from ichlib.device import describe_precision, resolve_amp, resolve_device
from ichlib.errors import ConfigError


def test_amp_resolution(monkeypatch):
    monkeypatch.delenv("ICHLIB_AMP", raising=False)
    cpu = torch.device("cpu")
    assert resolve_amp("off", cpu) is None
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="CUDA"):
        resolve_amp("fp16", cpu)
    monkeypatch.setattr("ichlib.device.bf16_pays_on_cpu", lambda: True)
    assert resolve_amp("auto", cpu) is torch.bfloat16
    monkeypatch.setattr("ichlib.device.bf16_pays_on_cpu", lambda: False)
    assert resolve_amp("auto", cpu) is None


def test_auto_picks_bf16_only_with_amx(monkeypatch):
    # AVX512-BF16 alone trains slower in bf16 than in float32 (benchmarks/RESULTS.md).
    monkeypatch.delenv("ICHLIB_AMP", raising=False)
    monkeypatch.setattr("ichlib.device.cpu_has_amx", lambda: False)
    monkeypatch.setattr("ichlib.device.cpu_has_native_bf16", lambda: True)
    assert resolve_amp("auto", torch.device("cpu")) is None
    monkeypatch.setattr("ichlib.device.cpu_has_amx", lambda: True)
    assert resolve_amp("auto", torch.device("cpu")) is torch.bfloat16


def test_ichlib_amp_overrides_auto_only(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr("ichlib.device.bf16_pays_on_cpu", lambda: False)
    monkeypatch.setenv("ICHLIB_AMP", "bf16")
    assert resolve_amp("auto", cpu) is torch.bfloat16
    assert resolve_amp("off", cpu) is None               # an explicit choice wins
    monkeypatch.setenv("ICHLIB_AMP", "off")
    monkeypatch.setattr("ichlib.device.bf16_pays_on_cpu", lambda: True)
    assert resolve_amp("auto", cpu) is None
    monkeypatch.setenv("ICHLIB_AMP", "bf17")
    with pytest.raises(ConfigError, match="ICHLIB_AMP"):
        resolve_amp("auto", cpu)


def test_devices_and_their_description():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert describe_precision(torch.device("cpu"), None, True) == "cpu, float32, channels_last"
    assert describe_precision(torch.device("cpu"), torch.bfloat16) == "cpu, bfloat16 autocast"
