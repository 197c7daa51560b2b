"""Crash-safe training: atomic writes, a SIGKILL in the middle of an epoch, a full disk.

Every checkpoint, cache and dataset file goes through :mod:`ichlib.io.atomic` (written to a
temporary name beside the target, then renamed), so a crash leaves the previous file or
the new one, never half of one, and a failed write raises a clear error.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import ichlib
import ichlib.checkpoint
import ichlib.io.atomic
from ichlib.checkpoint import load_checkpoint, save_checkpoint
from ichlib.errors import IchlibError
from ichlib.io.atomic import atomic_path
from ichlib.model import CNNBiLSTM
from ichlib.preprocess.dataset import PreprocessConfig
from ichlib.training.config import TrainConfig
from ichlib.training.fit import fit
from tests.conftest import labels_with, write_ct_ich

SOURCES = sorted(Path(ichlib.__file__).parent.rglob("*.py"))
#: Calls that write a file given as their first argument, and what they are.
_WRITERS = {"save", "savez", "savez_compressed", "savefig", "dcmwrite", "save_as", "to_csv",
            "to_parquet", "to_json", "write_text", "write_bytes", "tofile", "dump"}


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def tiny_checkpoint(seed: int) -> dict:
    torch.manual_seed(seed)
    model = CNNBiLSTM(lstm_hidden=8)
    return {"model": model.state_dict(), "model_config": model.model_config,
            "preprocess": PreprocessConfig(img_size=16, seq_len=2).to_dict(), "epoch": seed}


# --- every write is atomic --------------------------------------------------------------

def _unsafe_writes(path: Path) -> list[str]:
    """File-writing calls in a module that do not write to a name bound by
    ``with atomic_path(...) as NAME`` or ``with atomic_open(...) as NAME``, or to an
    in-memory ``io.BytesIO()`` buffer."""
    bad: list[str] = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_memory = frozenset(
        target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call) and ast.unparse(node.value.func) in ("io.BytesIO", "BytesIO")
        for target in node.targets if isinstance(target, ast.Name))

    def visit(node: ast.AST, safe: frozenset[str]) -> None:
        if isinstance(node, ast.With):
            bound = {item.optional_vars.id for item in node.items
                     if isinstance(item.optional_vars, ast.Name) and isinstance(item.context_expr, ast.Call)
                     and getattr(item.context_expr.func, "id", getattr(item.context_expr.func, "attr", ""))
                     in ("atomic_path", "atomic_open")}
            safe = safe | bound
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            writes = name in _WRITERS
            if name == "open":
                mode = node.args[1] if len(node.args) > 1 else next(
                    (k.value for k in node.keywords if k.arg == "mode"), None)
                writes = isinstance(mode, ast.Constant) and any(m in str(mode.value) for m in "wax+")
            targets = [a for a in node.args[:2] if isinstance(a, ast.Name)]
            returns_text = name in ("to_csv", "to_json") and not node.args
            if writes and not returns_text and not any(t.id in safe for t in targets):
                bad.append(f"{path.name}:{node.lineno}: {ast.unparse(node)[:80]}")
        for child in ast.iter_child_nodes(node):
            visit(child, safe)

    visit(tree, in_memory)
    return bad


@pytest.mark.parametrize("module", [p for p in SOURCES if p.name != "atomic.py"], ids=lambda p: p.name)
def test_every_file_write_goes_through_atomic(module):
    """torch.save, np.save, nib.save, savefig, dcmwrite, json.dump, open(..., "w") ... write
    only to the temporary name of an ``atomic_path``/``atomic_open`` block; text for
    ``atomic_write_text`` comes from ``to_csv()``/``json.dumps`` without a path."""
    bad = _unsafe_writes(module)
    assert not bad, "writes that bypass ichlib.io.atomic:\n" + "\n".join(bad)


def test_the_write_check_catches_a_direct_write(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("import torch\nfrom ichlib.io.atomic import atomic_path\n"
                      "def f(obj, path):\n    with atomic_path(path) as tmp:\n        torch.save(obj, tmp)\n"
                      "    torch.save(obj, path)\n    open(path, 'w').write('x')\n")
    assert [line.split(":")[1] for line in _unsafe_writes(module)] == ["6", "7"]


def test_an_exception_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", tiny_checkpoint(1))
    before = path.read_bytes()
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(Path(f).read_bytes()[:100])  # half written ...
        raise RuntimeError("crash in the middle of torch.save")  # ... then the crash

    monkeypatch.setattr(ichlib.checkpoint.torch, "save", half_then_fail)
    with pytest.raises(RuntimeError, match="crash in the middle"):
        save_checkpoint(path, tiny_checkpoint(2))
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_an_interrupt_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", tiny_checkpoint(1))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ichlib.checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, tiny_checkpoint(2))
    assert load_checkpoint(path)["epoch"] == 1 and not leftovers(tmp_path)


@pytest.mark.parametrize("where", ["torch.save", "torch.save_zip_writer", "os.replace", "fsync"])
def test_a_full_disk_raises_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    path = save_checkpoint(tmp_path / "best.pt", tiny_checkpoint(1))
    before = path.read_bytes()

    def full(*args, **kwargs):
        if where == "torch.save_zip_writer":  # what torch's zip writer really raises on ENOSPC
            raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter "
                               "failed writing file data/0: file write failed")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = {"torch.save": (ichlib.checkpoint.torch, "save"), "os.replace": (ichlib.io.atomic.os, "replace"),
              "torch.save_zip_writer": (ichlib.checkpoint.torch, "save"),
              "fsync": (ichlib.io.atomic.os, "fsync")}[where]
    monkeypatch.setattr(*target, full)
    with pytest.raises(IchlibError) as info:
        save_checkpoint(path, tiny_checkpoint(2))
    message = str(info.value)
    assert str(path) in message and "could not write the file" in message
    assert ("file write failed" if where.endswith("zip_writer") else "no space left on the device") in message
    assert "previous version is left intact" in message
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1
    assert not leftovers(tmp_path)


def test_a_failed_cache_write_leaves_no_partial_cache(tmp_path, monkeypatch):
    """The resized-volume cache (np.save) is atomic too: a full disk leaves no .npy behind."""
    target = tmp_path / "cache" / "049.npy"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(IchlibError, match="(?i)no space left"), atomic_path(target, suffix=".npy") as tmp:
        np.save(tmp, np.zeros(3))
    assert list(target.parent.iterdir()) == []


def test_fit_on_a_full_disk_stops_clearly_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    data = write_ct_ich(tmp_path / "ds", {49 + i: labels_with(4, (i % 5) if i % 2 else None, 1, 3)
                                          for i in range(6)}, size=16)
    config = TrainConfig(data_dir=str(data), out_dir=str(tmp_path / "run"), epochs=2, batch_size=2,
                         img_size=16, seq_len=2, lstm_hidden=8, val_fraction=1 / 3, test_fraction=1 / 3,
                         n_boot=5, progress=False, deterministic=True, amp="off", device="cpu",
                         cache_dir=str(tmp_path / "cache"))
    real_save = torch.save

    def full_in_epoch_2(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ichlib.checkpoint.torch, "save", full_in_epoch_2)
    with pytest.raises(IchlibError, match="(?i)no space left on the device") as info:
        fit(config)
    assert "last.pt" in str(info.value) or "best.pt" in str(info.value)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert not leftovers(tmp_path / "run")


# --- SIGKILL in the middle of an epoch, then --resume ------------------------------------

def _train_command(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ichlib", "train", "--data", str(data), "--out", str(out),
            "--epochs", "3", "--batch-size", "2", "--img-size", "32", "--seq-len", "4",
            "--n-boot", "5", "--amp", "off", "--device", "cpu", "--deterministic", "--seed", "0",
            "--cache-dir", str(cache), *extra]


def _env() -> dict[str, str]:
    root = str(Path(ichlib.__file__).parent.parent)
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    """The end-to-end resume test: killed mid-epoch, resumed, equal to an uninterrupted run."""
    # 16 patients: 12 train scans = 6 batches, about a second per epoch at 32 px.
    data = write_ct_ich(tmp_path / "ds", {49 + i: labels_with(6, (i % 5) if i % 2 else None, 1, 4)
                                          for i in range(16)}, size=32)
    cache = tmp_path / "cache"
    run = tmp_path / "killed"
    last = run / "last.pt"
    proc = subprocess.Popen(_train_command(data, run, cache), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 40
        while not last.exists():  # written (renamed into place) at the end of epoch 1
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "epoch 1 did not finish in time"
            time.sleep(0.005)
        time.sleep(0.3)  # well into epoch 2's training batches
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "metrics.json").exists(), "the run finished before the kill"

    interrupted = load_checkpoint(last)  # the last checkpoint is whole and loads
    assert interrupted["epoch"] == 1 and len(interrupted["history"]) == 1

    resumed = subprocess.run(_train_command(data, run, cache, "--resume"), env=_env(),
                             capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming" in resumed.stdout and "after epoch 1" in resumed.stdout
    reference = subprocess.run(_train_command(data, tmp_path / "reference", cache), env=_env(),
                               capture_output=True, text=True, timeout=60)
    assert reference.returncode == 0, reference.stderr

    got = load_checkpoint(last)
    expected = load_checkpoint(tmp_path / "reference" / "last.pt")
    assert got["epoch"] == expected["epoch"] == 3
    assert got["model"].keys() == expected["model"].keys()
    differing = [k for k, v in expected["model"].items() if not torch.equal(got["model"][k], v)]
    assert not differing, f"weights differ after kill + resume: {differing}"
    assert got["lr_scheduler"] == expected["lr_scheduler"]
    for key, moments in expected["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(got["optimizer"]["state"][key][name], value), (key, name)
    timing = ["train_seconds", "train_slices_per_s"]
    pd.testing.assert_frame_equal(pd.read_csv(run / "history.csv").drop(columns=timing),
                                  pd.read_csv(tmp_path / "reference" / "history.csv").drop(columns=timing))
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (run, tmp_path / "reference")]
    assert metrics[0]["test"] == metrics[1]["test"] and metrics[0]["baseline"] == metrics[1]["baseline"]
    assert not leftovers(run)


def test_the_write_check_allows_in_memory_buffers(tmp_path):
    module = tmp_path / "buffer.py"
    module.write_text("import io\ndef f(fig, path):\n    buffer = io.BytesIO()\n    fig.savefig(buffer)\n"
                      "    fig.savefig(path)\n")
    assert [line.split(":")[1] for line in _unsafe_writes(module)] == ["5"]
