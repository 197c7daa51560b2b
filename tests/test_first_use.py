"""First use on a fresh machine: the command line with empty HOME and cache folders.

``HOME``, ``XDG_CACHE_HOME`` and ``ICHLIB_CACHE`` point at empty folders, so nothing a
developer's earlier runs left behind (a measured precision, resized volumes) can hide a bug:
``ichlib predict`` before any training once failed on every scan of an AVX512-BF16 CPU because
training had always filled the precision cache first (issue 21). Each CPU kind is simulated by
monkeypatching its flags as ``tests/test_device.py`` does, so the CLI runs in-process
(:func:`ichlib.cli.main`): there is no environment variable that fakes CPU flags for a
subprocess. One subprocess runs ``ichlib predict`` on this machine's own CPU.

``make test-first-use`` runs this tier alone (CI runs it after ``make test``, which includes it).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ichlib.device
from ichlib.cli import main

pytestmark = pytest.mark.first_use

ROOT = Path(__file__).resolve().parents[1]

#: CPU kinds: (AMX, native bf16) and the precision ``amp="auto"`` must pick without a measurement.
CPU_KINDS = {"amx": (True, True), "avx512_bf16_no_amx": (False, True), "no_native_bf16": (False, False)}


def _fresh_home(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path:
    """Point HOME, XDG_CACHE_HOME and ICHLIB_CACHE at new empty folders under ``root``."""
    for name, sub in (("HOME", "home"), ("XDG_CACHE_HOME", "xdg-cache"), ("ICHLIB_CACHE", "ichlib-cache")):
        (root / sub).mkdir(parents=True)
        monkeypatch.setenv(name, str(root / sub))
    monkeypatch.delenv("ICHLIB_AMP", raising=False)
    return root / "ichlib-cache"


def _cpu(monkeypatch: pytest.MonkeyPatch, kind: str) -> list[tuple[str, bool]]:
    """Make this a CPU of ``kind`` that has measured nothing yet; the real measurements run
    (one repeat each, to stay quick). Returns ``(what, inference mode on)`` per measurement."""
    amx, native = CPU_KINDS[kind]
    monkeypatch.setattr("ichlib.device.cpu_has_amx", lambda: amx)
    monkeypatch.setattr("ichlib.device.cpu_has_native_bf16", lambda: native)
    measured: list[tuple[str, bool]] = []
    for name, what in (("_time_training_step", "training"), ("_time_forward_pass", "inference")):
        real = getattr(ichlib.device, name)

        def timed(dtype, repeats: int = 3, real=real, what=what) -> float:
            measured.append((what, torch.is_inference_mode_enabled()))
            return real(dtype, repeats=1)
        monkeypatch.setattr(f"ichlib.device.{name}", timed)
    for name in ("measured_bf16_speedup", "measured_bf16_inference_speedup"):  # a new process
        monkeypatch.setattr(f"ichlib.device.{name}",
                            functools.cache(getattr(ichlib.device, name).__wrapped__))
    return measured


@pytest.fixture(scope="module")
def phantom_and_checkpoint(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny synthetic phantom (8 patients, 32 px), and a checkpoint trained on it elsewhere
    (another HOME and cache), as a downloaded checkpoint would be."""
    root = tmp_path_factory.mktemp("first_use")
    with pytest.MonkeyPatch.context() as mp:
        _fresh_home(mp, root / "trainer")
        _cpu(mp, "no_native_bf16")
        assert main(["synth", str(root / "phantom"), "--patients", "8", "--size", "32",
                     "--workers", "1"]) == 0
        assert main(["train", *_tiny_training(root / "phantom", root / "run")]) == 0
    return root / "phantom", root / "run" / "best.pt", root / "phantom" / "ct_scans" / "001.nii"


def _tiny_training(data: Path, out: Path) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--epochs", "1", "--img-size", "16",
            "--seq-len", "4", "--n-boot", "10"]


@pytest.mark.parametrize("kind", list(CPU_KINDS))
def test_predict_cam_check_and_train_on_a_fresh_machine(kind, phantom_and_checkpoint, tmp_path,
                                                        monkeypatch, capsys):
    phantom, checkpoint, scan = phantom_and_checkpoint
    cache = _fresh_home(monkeypatch, tmp_path)
    measured = _cpu(monkeypatch, kind)
    precision_file = cache / ichlib.device.PRECISION_CACHE

    # Predict first, before anything was trained or measured on this machine.
    assert main(["predict", "--checkpoint", str(checkpoint), str(scan)]) == 0
    out, err = capsys.readouterr()
    table = out.splitlines()
    assert table[0] == str(scan) and table[1].split() == ["label", "probability", "threshold*", "call"]
    assert [line.split()[0] for line in table[2:8]] == list(ichlib.LABELS) and "error" not in err
    if kind == "avx512_bf16_no_amx":  # measured: a forward pass, outside inference mode
        assert measured == [("inference", False)] * 2
        assert [k.endswith("| inference") for k in json.loads(precision_file.read_text())] == [True]
    else:
        assert measured == [] and not precision_file.exists()

    assert main(["predict", "--checkpoint", str(checkpoint), "--cam", str(tmp_path / "cam"),
                 "--cam-top-k", "2", str(scan)]) == 0
    assert "Grad-CAM:" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "cam").glob("*.png")] == ["001_cam_any.png"]

    assert main(["check", str(phantom)]) == 0
    assert "No problems found" in capsys.readouterr().out

    assert main(["train", *_tiny_training(phantom, tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    expected = "float32" if kind == "no_native_bf16" else "bfloat16"
    if kind == "avx512_bf16_no_amx":  # the bf16 of this CPU kind is emulated here: not faster
        assert measured[2:] == [("training", False)] * 2
        expected = "bfloat16" if ichlib.device.measured_bf16_speedup() >= 1.15 else "float32"
        assert len(json.loads(precision_file.read_text())) == 2  # beside the inference figure
    assert f"Training on cpu, {expected}" in out
    assert (tmp_path / "run" / "best.pt").is_file()
    assert any(cache.rglob("*")), "training caches its resized volumes under ICHLIB_CACHE"


def test_the_issue_command_on_this_machine_with_an_empty_home(phantom_and_checkpoint, tmp_path):
    """``HOME=$(mktemp -d) ichlib predict --checkpoint best.pt scan`` in a new process, on this
    machine's own CPU (whatever it is)."""
    _, checkpoint, scan = phantom_and_checkpoint
    env = {k: v for k, v in os.environ.items()
           if k not in ("ICHLIB_AMP", "ICHLIB_CACHE", "XDG_CACHE_HOME", "MPLCONFIGDIR")}
    env.update(HOME=str(tmp_path), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "ichlib", "predict", "--checkpoint", str(checkpoint),
                           str(scan)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(str(scan)) and "any" in done.stdout and done.stderr == ""
