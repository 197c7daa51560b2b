"""Device and precision: which autocast dtype each setting gives on this machine."""

from __future__ import annotations

import json
import math

import pytest
import torch

import ichlib.device
from ichlib.device import describe_precision, resolve_amp, resolve_device
from ichlib.errors import ConfigError


def test_amp_resolution(monkeypatch):
    monkeypatch.delenv("ICHLIB_AMP", raising=False)
    cpu = torch.device("cpu")
    assert resolve_amp("off", cpu) is None
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="CUDA"):
        resolve_amp("fp16", cpu)
    monkeypatch.setattr("ichlib.device.bf16_pays_on_cpu", lambda inference=False: True)
    assert resolve_amp("auto", cpu) is torch.bfloat16
    monkeypatch.setattr("ichlib.device.bf16_pays_on_cpu", lambda inference=False: False)
    assert resolve_amp("auto", cpu) is None


def test_auto_picks_bf16_with_amx_never_when_emulated_and_by_measurement_otherwise(monkeypatch):
    monkeypatch.delenv("ICHLIB_AMP", raising=False)
    cpu = torch.device("cpu")
    measured = []
    monkeypatch.setattr("ichlib.device.measured_bf16_speedup", lambda: measured.append(1) or speedup)
    monkeypatch.setattr("ichlib.device.cpu_has_amx", lambda: True)
    speedup = 0.5
    assert resolve_amp("auto", cpu) is torch.bfloat16 and not measured  # AMX: no need to measure
    monkeypatch.setattr("ichlib.device.cpu_has_amx", lambda: False)
    monkeypatch.setattr("ichlib.device.cpu_has_native_bf16", lambda: False)
    speedup = 5.0
    assert resolve_amp("auto", cpu) is None and not measured             # emulated bf16: never
    monkeypatch.setattr("ichlib.device.cpu_has_native_bf16", lambda: True)
    assert resolve_amp("auto", cpu) is torch.bfloat16 and measured        # AVX512-BF16, measured faster
    speedup = 0.86                                                        # ... or slower (one Xeon)
    assert resolve_amp("auto", cpu) is None


def _fake_steps(monkeypatch, fp32_s: float, bf16_s: float) -> list:
    calls = []

    def step(dtype, repeats: int = 3) -> float:
        calls.append(dtype)
        return bf16_s if dtype is torch.bfloat16 else fp32_s
    monkeypatch.setattr("ichlib.device._time_training_step", step)
    ichlib.device.measured_bf16_speedup.cache_clear()
    return calls


def test_the_measured_speedup_is_cached_per_cpu_and_remeasured_when_damaged(monkeypatch, tmp_path):
    monkeypatch.setenv("ICHLIB_CACHE", str(tmp_path))
    calls = _fake_steps(monkeypatch, fp32_s=0.2, bf16_s=0.1)
    assert ichlib.device.measured_bf16_speedup() == pytest.approx(2.0)
    cache = tmp_path / ichlib.device.PRECISION_CACHE
    entry = json.loads(cache.read_text())
    (key, value), = entry.items()
    assert ichlib.device.cpu_model() in key and torch.__version__ in key
    assert value == {"fp32_step_s": 0.2, "bf16_step_s": 0.1, "bf16_speedup": pytest.approx(2.0)}
    # A new process (cache_clear) reads the file instead of measuring.
    calls = _fake_steps(monkeypatch, fp32_s=1.0, bf16_s=1.0)
    assert ichlib.device.measured_bf16_speedup() == pytest.approx(2.0) and calls == []
    # A damaged file, or a NaN in it, means measuring again; the file is rewritten whole.
    for damage in ("{not json", json.dumps({key: {"bf16_speedup": float("nan")}})):
        cache.write_text(damage)
        calls = _fake_steps(monkeypatch, fp32_s=0.3, bf16_s=0.2)
        assert ichlib.device.measured_bf16_speedup() == pytest.approx(1.5) and len(calls) == 2
        assert json.loads(cache.read_text())[key]["bf16_speedup"] == pytest.approx(1.5)
    ichlib.device.measured_bf16_speedup.cache_clear()


def test_an_unwritable_cache_still_gives_the_measurement(monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("ICHLIB_CACHE", str(blocker / "cache"))
    _fake_steps(monkeypatch, fp32_s=0.3, bf16_s=0.1)
    assert ichlib.device.measured_bf16_speedup() == pytest.approx(3.0)
    ichlib.device.measured_bf16_speedup.cache_clear()


def test_the_real_measurement_times_both_precisions_even_inside_inference_mode(monkeypatch):
    made = []
    real = ichlib.device._timing_model

    def keep():
        model, x = real()
        made.append((model, [p.detach().clone() for p in model.parameters()]))
        return model, x

    monkeypatch.setattr(ichlib.device, "_timing_model", keep)
    with torch.inference_mode():  # where prediction once called it: the step still trains
        seconds = [ichlib.device._time_training_step(dtype, repeats=1)
                   for dtype in (None, torch.bfloat16)]
        seconds += [ichlib.device._time_forward_pass(dtype, repeats=1)
                    for dtype in (None, torch.bfloat16)]
    assert all(math.isfinite(s) and s > 0 for s in seconds)
    changed = [any(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
               for model, before in made]
    # the two training steps updated their weights (gradients flowed); the forward passes did not
    assert changed == [True, True, False, False]


def _fake_forwards(monkeypatch, fp32_s: float, bf16_s: float) -> list:
    calls = []

    def forward(dtype, repeats: int = 3) -> float:
        calls.append(dtype)
        return bf16_s if dtype is torch.bfloat16 else fp32_s
    monkeypatch.setattr("ichlib.device._time_forward_pass", forward)
    ichlib.device.measured_bf16_inference_speedup.cache_clear()
    return calls


def test_the_inference_figure_is_cached_beside_the_training_figure(monkeypatch, tmp_path):
    monkeypatch.setenv("ICHLIB_CACHE", str(tmp_path))
    _fake_steps(monkeypatch, fp32_s=0.2, bf16_s=0.1)
    assert ichlib.device.measured_bf16_speedup() == pytest.approx(2.0)
    forwards = _fake_forwards(monkeypatch, fp32_s=0.1, bf16_s=0.2)
    assert ichlib.device.measured_bf16_inference_speedup() == pytest.approx(0.5)
    assert forwards == [None, torch.bfloat16]
    cache = json.loads((tmp_path / ichlib.device.PRECISION_CACHE).read_text())
    (train_key, train), (infer_key, infer) = sorted(cache.items())
    assert infer_key == f"{train_key} | inference"
    assert train["bf16_speedup"] == pytest.approx(2.0)                  # not replaced
    assert infer == {"fp32_forward_s": 0.1, "bf16_forward_s": 0.2, "bf16_speedup": pytest.approx(0.5)}
    # A new process reads both figures back without measuring either.
    steps, forwards = _fake_steps(monkeypatch, 9.0, 1.0), _fake_forwards(monkeypatch, 9.0, 1.0)
    assert ichlib.device.measured_bf16_speedup() == pytest.approx(2.0)
    assert ichlib.device.measured_bf16_inference_speedup() == pytest.approx(0.5)
    assert steps == forwards == []
    ichlib.device.measured_bf16_speedup.cache_clear()
    ichlib.device.measured_bf16_inference_speedup.cache_clear()


def test_inference_precision_is_decided_by_the_inference_figure(monkeypatch):
    monkeypatch.delenv("ICHLIB_AMP", raising=False)
    cpu = torch.device("cpu")
    monkeypatch.setattr("ichlib.device.cpu_has_amx", lambda: False)
    monkeypatch.setattr("ichlib.device.cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr("ichlib.device.measured_bf16_speedup", lambda: 2.0)
    monkeypatch.setattr("ichlib.device.measured_bf16_inference_speedup", lambda: 0.9)
    assert resolve_amp("auto", cpu) is torch.bfloat16                  # training: bf16 pays
    assert resolve_amp("auto", cpu, inference=True) is None             # prediction: it does not
    monkeypatch.setattr("ichlib.device.measured_bf16_inference_speedup", lambda: 1.9)
    assert resolve_amp("auto", cpu, inference=True) is torch.bfloat16


def test_ichlib_amp_overrides_auto_only(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr("ichlib.device.bf16_pays_on_cpu", lambda inference=False: False)
    monkeypatch.setenv("ICHLIB_AMP", "bf16")
    assert resolve_amp("auto", cpu) is torch.bfloat16
    assert resolve_amp("off", cpu) is None               # an explicit choice wins
    monkeypatch.setenv("ICHLIB_AMP", "off")
    monkeypatch.setattr("ichlib.device.bf16_pays_on_cpu", lambda inference=False: True)
    assert resolve_amp("auto", cpu) is None
    monkeypatch.setenv("ICHLIB_AMP", "bf17")
    with pytest.raises(ConfigError, match="ICHLIB_AMP"):
        resolve_amp("auto", cpu)


def test_devices_and_their_description():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert describe_precision(torch.device("cpu"), None, True) == "cpu, float32, channels_last"
    assert describe_precision(torch.device("cpu"), torch.bfloat16) == "cpu, bfloat16 autocast"
