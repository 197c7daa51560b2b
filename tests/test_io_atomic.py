"""Atomic writes: whole files or none, the umask honoured, and every failed write one clear
line naming the file, on real full, inode-exhausted and read-only file systems."""

import errno
import os
import stat
import time

import numpy as np
import pytest
import torch

from ichlib.checkpoint import save_checkpoint
from ichlib.errors import DataError, IchlibError
from ichlib.io.atomic import (
    atomic_open,
    atomic_path,
    atomic_write_text,
    is_temporary,
    remove_stale_temporaries,
)
from ichlib.io.nifti import save_volume
from tests.conftest import fill_inodes, remount_read_only


def test_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert os.listdir(target.parent) == ["f.txt"]


def test_failure_inside_the_block_keeps_the_previous_file(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("half of the new")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_os_error_becomes_ichlib_error_naming_the_file(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_text(target, "keep me")
    with pytest.raises(IchlibError, match="f.bin.*no space left") as info:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x")
            raise OSError(28, "No space left on device")
    assert "previous version is left intact" in str(info.value)
    assert target.read_text() == "keep me"
    assert os.listdir(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask):
    """mkstemp makes 0600 files; a shared folder needs what open() would give (0666 & ~umask)."""
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "b.npy", suffix=".npy") as tmp:
            np.save(tmp, np.zeros(2))
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.npy"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o666 & ~umask


def test_quota_exceeded_is_named(tmp_path):
    """EDQUOT cannot be made for real without a quota-enabled file system, so it is raised."""
    with pytest.raises(DataError, match="disk quota exceeded") as info:
        with atomic_path(tmp_path / "q.bin"):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert info.value.path == str(tmp_path / "q.bin") and os.listdir(tmp_path) == []


# --- real file systems: full, out of inodes, read-only -------------------------------------

def _one_clear_line(exc: BaseException, target) -> str:
    message = str(exc)
    assert isinstance(exc, DataError) and exc.path == str(target)
    assert "\n" not in message and message.startswith(f"{target}: could not write the file")
    return message


WRITERS = {
    "text": lambda p: atomic_write_text(p, "x" * 200_000),
    "checkpoint": lambda p: save_checkpoint(p, {"model": {"w": torch.zeros(100_000)},
                                                "model_config": {}, "preprocess": {}}),
    "nifti": lambda p: save_volume(p, np.random.default_rng(0).normal(0, 500, (20, 64, 64))),
    "npy": lambda p: _save_npy(p, np.zeros(100_000, np.float32)),
}


def _save_npy(path, array):
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


@pytest.mark.parametrize("writer", list(WRITERS), ids=list(WRITERS))
def test_a_full_file_system_gives_one_line_and_no_partial_file(small_fs, writer):
    fs = small_fs(size="64k")
    target = fs / {"text": "a.txt", "checkpoint": "last.pt", "nifti": "s.nii", "npy": "c.npy"}[writer]
    with pytest.raises(DataError) as info:
        WRITERS[writer](target)
    assert "no space left" in _one_clear_line(info.value, target)
    assert os.listdir(fs) == []


def test_a_full_file_system_keeps_the_previous_file(small_fs):
    fs = small_fs(size="64k")
    target = fs / "history.csv"
    atomic_write_text(target, "epoch\n1\n")
    with pytest.raises(DataError) as info:
        atomic_write_text(target, "epoch\n" + "2\n" * 100_000)
    _one_clear_line(info.value, target)
    assert target.read_text() == "epoch\n1\n" and os.listdir(fs) == ["history.csv"]


def test_no_free_inodes_gives_one_line(small_fs):
    fs = small_fs(size="1m", inodes=16)
    (fs / "run").mkdir()
    assert fill_inodes(fs) > 0
    target = fs / "run" / "metrics.json"
    with pytest.raises(DataError) as info:
        atomic_write_text(target, "{}")
    assert "no space left on the device (or no free inodes)" in _one_clear_line(info.value, target)
    assert os.listdir(fs / "run") == []


def test_a_read_only_file_system_gives_one_line(small_fs):
    fs = small_fs(size="64k")
    (fs / "run").mkdir()
    remount_read_only(fs)
    for target in (fs / "run" / "last.pt", fs / "new" / "cache" / "x.npy"):
        with pytest.raises(DataError) as info:
            WRITERS["checkpoint" if target.suffix == ".pt" else "npy"](target)
        assert "read-only" in _one_clear_line(info.value, target)
    assert os.listdir(fs / "run") == [] and not (fs / "new").exists()


# --- stale temporaries -------------------------------------------------------------------

def test_stale_temporaries_are_recognised_and_removed(tmp_path):
    with atomic_path(tmp_path / "last.pt", suffix=".pt") as tmp:
        name = tmp.name
        tmp.write_bytes(b"x")
    assert (tmp_path / "last.pt").read_bytes() == b"x"
    assert is_temporary(name) and not is_temporary("last.pt") and not is_temporary(".hidden.tmp")
    stale = [tmp_path / name, tmp_path / ".best.pt.abcd_123.tmp.pt", tmp_path / ".h.csv.zzzzzzzz.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    keep = [tmp_path / "last.pt", tmp_path / "notes.tmp", tmp_path / ".x.tmp"]
    for path in keep[1:]:
        path.write_bytes(b"mine")
    old = time.time() - 7200
    os.utime(stale[0], (old, old))
    assert remove_stale_temporaries(tmp_path, older_than_s=3600) == [(stale[0], 4)]
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted((p, 4) for p in stale[1:])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)
