"""Where and in what precision models run: the device, and bf16/fp16 autocast.

Used by training and by prediction alike, so prediction does not import the training stack.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ichlib import resnet
from ichlib.errors import ConfigError
from ichlib.io.atomic import atomic_write_text
from ichlib.io.cachedir import default_cache_dir


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


def _cpuinfo(field: str) -> str:
    """The first ``field`` line of ``/proc/cpuinfo`` (empty where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    return ""


def _cpu_flags() -> set[str]:
    return set(_cpuinfo("flags").split())


#: bf16 must make a training step (or, for prediction, a forward pass) at least this much
#: faster to be chosen by ``amp="auto"``.
BF16_MIN_SPEEDUP = 1.15

#: File in the cache folder (:func:`ichlib.io.cachedir.default_cache_dir`) that keeps the
#: measured bf16 speed-ups per CPU model, torch version and thread count: the training
#: figure under that key, the inference figure under the key followed by ``| inference``.
PRECISION_CACHE = "cpu-precision.json"


def bf16_pays_on_cpu(inference: bool = False) -> bool:
    """Whether bf16 autocast trains (or, with ``inference``, predicts) faster than float32 here.

    With AMX it does; without native bf16 (emulated) it does not. With AVX512-BF16 alone it
    depends on the CPU (slower than float32 on one Xeon, about twice as fast on an AMD EPYC;
    ``benchmarks/RESULTS.md``), so it is measured once (:func:`measured_bf16_speedup` or
    :func:`measured_bf16_inference_speedup`) and kept per CPU model.
    """
    if cpu_has_amx():
        return True
    if not cpu_has_native_bf16():
        return False
    speedup = measured_bf16_inference_speedup() if inference else measured_bf16_speedup()
    return speedup >= BF16_MIN_SPEEDUP


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown"


@functools.cache
def measured_bf16_speedup() -> float:
    """float32 step time / bf16 step time of a small ResNet-18 training step on this CPU.

    Measured once per CPU model, torch version and thread count (about a second), and kept
    in :data:`PRECISION_CACHE` in the cache folder; a missing, unreadable or damaged file
    means measuring again. When the cache cannot be written the figure is still used.
    """
    return _cached_speedup("", _time_training_step, ("fp32_step_s", "bf16_step_s", "bf16_speedup"))


@functools.cache
def measured_bf16_inference_speedup() -> float:
    """float32 time / bf16 time of a ResNet-18 forward pass in inference mode on this CPU.

    What prediction measures (never a training step): cached like
    :func:`measured_bf16_speedup`, under its own key, so neither figure replaces the other.
    """
    return _cached_speedup(" | inference", _time_forward_pass,
                           ("fp32_forward_s", "bf16_forward_s", "bf16_speedup"))


def _cached_speedup(kind: str, time_it: Callable[[torch.dtype | None], float],
                    fields: tuple[str, str, str]) -> float:
    """The speed-up of bf16 cached under this CPU's key plus ``kind``, or measured and cached.

    Args:
        kind: Appended to the key (empty for the training figure, which keeps its old key).
        time_it: Seconds of one step in a given autocast dtype (None: float32).
        fields: Names of the float32 seconds, bf16 seconds and speed-up in the cache entry.
    """
    key = f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads{kind}"
    path = default_cache_dir() / PRECISION_CACHE
    known = _read_json_dict(path)
    with contextlib.suppress(KeyError, TypeError, ValueError):
        speedup = float(known[key][fields[2]])
        if math.isfinite(speedup) and speedup > 0:
            return speedup
    fp32_s, bf16_s = time_it(None), time_it(torch.bfloat16)
    speedup = fp32_s / bf16_s
    known[key] = dict(zip(fields, (fp32_s, bf16_s, speedup)))
    with contextlib.suppress(Exception):  # an unwritable cache: the figure is still used
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(known, indent=1))
    return speedup


def _read_json_dict(path: Path) -> dict:
    """The JSON object in ``path``; empty when the file is missing, unreadable or not an object."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}


def _timing_model() -> tuple[torch.nn.Module, torch.Tensor]:
    """A seeded ResNet-18 and 8 slices of 96² in channels-last format."""
    model = resnet.resnet18(num_classes=6).to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 96, 96, generator=generator).contiguous(memory_format=torch.channels_last)
    return model, x


def _median_of_runs(run: Callable[[], None], repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``run``, after one warm-up call."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def _time_training_step(dtype: torch.dtype | None, repeats: int = 3) -> float:
    """Median seconds of a ResNet-18 training step on 8 slices of 96² in ``dtype`` autocast.

    Gradients are enabled for the measurement, even when called under ``torch.no_grad()``
    or ``torch.inference_mode()``.
    """
    with torch.inference_mode(False), torch.enable_grad():
        model, x = _timing_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step() -> None:
            with autocast(torch.device("cpu"), dtype):
                loss = model(x).float().square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return _median_of_runs(step, repeats)


def _time_forward_pass(dtype: torch.dtype | None, repeats: int = 3) -> float:
    """Median seconds of a ResNet-18 forward pass in eval and inference mode on 8 slices of
    96² in ``dtype`` autocast (what prediction runs)."""
    model, x = _timing_model()
    model.eval()

    def forward() -> None:
        with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
            model(x)
    return _median_of_runs(forward, repeats)


def resolve_amp(amp: str, device: torch.device, inference: bool = False) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: plain float32).

    ``"auto"``: on CUDA bf16 where supported, else fp16; on CPU bf16 only where it is
    faster than float32 (:func:`bf16_pays_on_cpu`), else float32. With ``inference`` the
    CPU's inference speed decides (a forward pass is measured where it must be, never a
    training step); call it outside ``torch.inference_mode()`` all the same. The environment variable
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
    if device.type == "cpu" and bf16_pays_on_cpu(inference):
        return torch.bfloat16
    return None


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``device`` with ``amp_dtype``, or a no-op when None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def describe_precision(device: torch.device, amp_dtype: torch.dtype | None,
                       channels_last: bool = False) -> str:
    """One line naming the device and precision, e.g. ``"cpu, float32, channels_last"``."""
    name = {None: "float32", torch.bfloat16: "bfloat16 autocast", torch.float16: "float16 autocast"}[amp_dtype]
    return f"{device.type}, {name}{', channels_last' if channels_last else ''}"
