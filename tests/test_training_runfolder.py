"""The run folder: one run at a time (a lock naming its holder), never two runs mixed, the
leftovers of a killed run removed, and a full disk under --out or --cache-dir one clear line."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import ichlib
from ichlib.checkpoint import load_checkpoint
from ichlib.cli import main
from ichlib.errors import IchlibError, WriteError
from ichlib.training.fit import fit
from ichlib.training.runfolder import LOCK_NAME, RunFolderWarning, run_folder
from tests.conftest import labels_with, tiny_train_config, write_ct_ich

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    labels = {49 + i: labels_with(4, (i % 5) if i % 2 else None, 1, 3) for i in range(8)}
    return write_ct_ich(tmp_path_factory.mktemp("runfolder") / "ds", labels, size=16)


def config(data: Path, out: Path, **changes):
    return tiny_train_config(data, out, **{"epochs": 1, "img_size": 16, "seq_len": 2, "lstm_hidden": 8,
                                           "n_boot": 5, "amp": "off", "device": "cpu", **changes})


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--img-size", "16",
            "--seq-len", "2", "--n-boot", "5", "--amp", "off", "--device", "cpu", "--windows", "brain",
            "--cache-dir", str(out.parent / "cache"), *extra]


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A finished run folder (copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    fit(config(data, out))
    return out


def copy_run(run: Path, to: Path) -> Path:
    to.mkdir(parents=True)
    for path in run.iterdir():
        (to / path.name).write_bytes(path.read_bytes())
    return to


# --- one run at a time ----------------------------------------------------------------------

def test_a_second_run_into_a_held_folder_fails_at_once_naming_the_holder(data, tmp_path):
    out = tmp_path / "run"
    with run_folder(out, epochs=1):
        holder = (out / LOCK_NAME).read_text()
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in holder
        start = time.monotonic()
        with pytest.raises(IchlibError, match="the run folder is in use by pid") as info:
            fit(config(data, out))
        assert time.monotonic() - start < 1.0
        assert f"pid {os.getpid()}" in str(info.value) and "choose another --out" in str(info.value)
    assert not (out / LOCK_NAME).exists() and not (out / "last.pt").exists()
    with run_folder(out, epochs=1):  # free again
        assert (out / LOCK_NAME).exists()
    assert not (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_a_killed_runs_lock_is_taken_over_and_its_leftovers_removed(data, tmp_path, capsys):
    """A real second process holds the folder; after its SIGKILL the next run takes over."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "ichlib", *train_argv(data, out)]
    argv[argv.index("--epochs") + 1] = "500"
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "last.pt").exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert main(train_argv(data, out, "--overwrite")) == 1
        err = capsys.readouterr().err
        assert f"the run folder is in use by pid {proc.pid} on host {socket.gethostname()}" in err
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert f"pid {proc.pid}" in (out / LOCK_NAME).read_text()  # what a SIGKILL leaves
    (out / ".last.pt.a1b2c3d4.tmp.pt").write_bytes(b"\0" * 2_000_000)  # a half-written checkpoint
    assert main(train_argv(data, out, "--overwrite")) == 0
    err = capsys.readouterr().err
    assert f"warning: {out}: took over the lock of a run that no longer runs (pid {proc.pid}" in err
    # the fake one, and any the kill itself left half-written
    removed = re.search(r"warning: removed (\d+) stale temporary file\(s\) left by a killed run "
                        r"\((\d+\.\d) MB\)", err)
    assert removed and int(removed.group(1)) >= 1 and float(removed.group(2)) >= 2.0, err
    assert not [p for p in out.iterdir() if ".tmp" in p.name] and not (out / LOCK_NAME).exists()


def test_the_lock_is_released_when_a_run_fails(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(IchlibError):
        fit(config(tmp_path / "no_such_data", out))
    assert not (out / LOCK_NAME).exists()
    with run_folder(out, epochs=1), warnings.catch_warnings():
        warnings.simplefilter("error", RunFolderWarning)  # no stale lock to take over


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text("pid 4000000 on host elsewhere, started 2024-01-01T00:00:00+00:00\n")
    with pytest.warns(RunFolderWarning, match="took over the lock of a run that no longer runs "
                                              r"\(pid 4000000 on host elsewhere"):
        fit(config(data, out))
    assert (out / "metrics.json").exists() and not (out / LOCK_NAME).exists()


# --- never two runs in one folder -------------------------------------------------------------

def test_a_finished_run_is_refused_without_resume_or_overwrite(finished, data, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "run")
    before = (out / "metrics.json").read_bytes()
    with pytest.raises(IchlibError, match="the folder holds a finished run") as info:
        fit(config(data, out), existing="refuse")
    message = str(info.value)
    assert str(out) in message and "--resume" in message and "--overwrite" in message
    assert "metrics.json" in message and "1 epoch(s) in history.csv" in message
    assert main(train_argv(data, out)) == 1
    assert "ichlib train: error:" in capsys.readouterr().err
    assert (out / "metrics.json").read_bytes() == before


def test_overwrite_clears_the_old_run_and_says_so(finished, data, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "run")
    (out / "stage1.pt").write_bytes((out / "best.pt").read_bytes())  # as a two-stage run leaves
    (out / "notes.txt").write_text("mine")
    old_mtime = (out / "metrics.json").stat().st_mtime_ns
    assert main(train_argv(data, out, "--overwrite", "--seed", "3")) == 0
    err = capsys.readouterr().err
    assert f"warning: {out}: removed a finished run (best.pt, last.pt, stage1.pt" in err
    assert not (out / "stage1.pt").exists() and (out / "notes.txt").read_text() == "mine"
    assert (out / "metrics.json").stat().st_mtime_ns != old_mtime
    assert load_checkpoint(out / "best.pt")["config"]["seed"] == 3


def test_fit_from_python_clears_an_old_run_with_a_warning(finished, data, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    with pytest.warns(RunFolderWarning, match="removed a finished run"):
        result = fit(config(data, out, seed=5))
    assert json.loads(result.metrics_path.read_text())["config"]["seed"] == 5


def test_an_unfinished_run_is_refused_too(finished, data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes((finished / "last.pt").read_bytes())
    (out / "history.csv").write_text((finished / "history.csv").read_text())
    with pytest.raises(IchlibError, match=r"holds an unfinished run \(last.pt, history.csv, 1 epoch"):
        fit(config(data, out), existing="refuse")


def test_resume_keeps_a_finished_run(finished, data, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunFolderWarning)
        result = fit(config(data, out), resume=True, existing="refuse")
    assert result.metrics["training"]["epochs_run"] == 1


# --- leftovers of a killed run ------------------------------------------------------------------

def test_stale_temporary_files_are_removed_when_the_next_run_starts(data, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    out.mkdir()
    cache.mkdir()
    stale = [out / ".last.pt.k1ll3d00.tmp.pt", out / ".history.csv.zz99yy88.tmp",
             cache / ".049-16-0123456789abcdef.npy.abcdefgh.tmp.npy"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    old = time.time() - 3 * 3600
    os.utime(stale[2], (old, old))
    fresh = cache / ".050-16-0123456789abcdef.npy.qwertyui.tmp.npy"  # another live run's, maybe
    fresh.write_bytes(b"\0")
    with pytest.warns(RunFolderWarning, match=r"removed 3 stale temporary file\(s\) left by a killed run"):
        fit(config(data, out, cache_dir=str(cache)))
    assert not any(p.exists() for p in stale) and fresh.exists()


# --- a full disk under --out or --cache-dir ---------------------------------------------------

def test_a_full_disk_under_out_ends_with_one_line(data, small_fs, tmp_path, capsys):
    out = small_fs(size="256k") / "run"
    argv = train_argv(data, out)
    argv[argv.index("--cache-dir") + 1] = str(tmp_path / "cache")
    assert main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(err) == 1 and err[0].startswith(f"ichlib train: error: {out}/")
    assert "could not write the file: no space left on the device" in err[0]
    assert not [p for p in out.iterdir() if ".tmp" in p.name] and not (out / LOCK_NAME).exists()


def test_a_full_cache_disk_stops_the_run_instead_of_skipping_every_scan(data, small_fs, tmp_path, capsys):
    cache = small_fs(size="64k")  # two of the eight 64 px volumes fit
    argv = train_argv(data, tmp_path / "run", "--skip-bad")
    argv[argv.index("--cache-dir") + 1] = str(cache)
    argv[argv.index("--img-size") + 1] = "64"
    assert main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(err) == 1 and f"ichlib train: error: {cache}/" in err[0]
    assert "could not write the file: no space left on the device" in err[0]
    assert not [p for p in cache.iterdir() if ".tmp" in p.name]


def test_write_error_is_a_data_error_that_names_the_file(tmp_path):
    from ichlib.io.atomic import atomic_write_text

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    target = blocker / "run" / "history.csv"          # its folder cannot be made: a file is in the way
    with pytest.raises(ichlib.DataError) as info:
        atomic_write_text(target, "epoch\n1\n")
    assert type(info.value) is WriteError and info.value.path == str(target)
    assert str(info.value).startswith(f"{target}: could not write the file")
    assert info.value.problem == ("could not write the file: a part of the path is a file, not a folder; "
                                  "any previous version is left intact")


# --- Ctrl-C (the real SIGINT through the command line: tests/test_cli.py) ---------------------

def test_an_interrupt_says_which_epoch_last_pt_holds(data, tmp_path):
    from ichlib.errors import RunInterrupted

    def stop(epochs_done, row):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(RunInterrupted) as info:
        fit(config(data, out, epochs=3), on_epoch_end=stop)
    assert isinstance(info.value, KeyboardInterrupt)
    assert str(info.value) == (f"interrupted; {out / 'last.pt'} holds epoch 1 of 3. Run the same "
                               "command with --resume to continue from there.")
    assert load_checkpoint(out / "last.pt")["epoch"] == 1 and not (out / LOCK_NAME).exists()
