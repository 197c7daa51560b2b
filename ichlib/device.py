"""Where and in what precision models run: the device, and bf16/fp16 autocast.

Used by training and by prediction alike, so prediction does not import the training stack.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from ichlib.errors import ConfigError


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


def describe_precision(device: torch.device, amp_dtype: torch.dtype | None,
                       channels_last: bool = False) -> str:
    """One line naming the device and precision, e.g. ``"cpu, float32, channels_last"``."""
    name = {None: "float32", torch.bfloat16: "bfloat16 autocast", torch.float16: "float16 autocast"}[amp_dtype]
    return f"{device.type}, {name}{', channels_last' if channels_last else ''}"
