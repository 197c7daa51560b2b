"""Telling what a file is from its first bytes, and refusing what cannot be a checkpoint,
without PyTorch."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ichlib.errors import CheckpointError
from ichlib.io.nifti import save_volume
from ichlib.io.sniff import check_checkpoint_file, describe_file

ROOT = Path(__file__).resolve().parents[1]


def _torch_like_zip(path: Path, names: tuple[str, ...] = ("best/data.pkl", "best/version")) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, b"x" * 100)
    return path


def _write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(("name", "content", "kind"), [
    ("empty.pt", b"", "empty (0 bytes)"),
    ("history.csv", b"epoch,train_loss,val_loss\n1,0.5,0.6\n", "a CSV text file (first line 'epoch,train_loss,val_loss')"),
    ("notes.txt", "résumé\nsecond".encode(), "a text file (first line 'résumé')"),
    ("image.png", b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
    ("photo.jpg", b"\xff\xd8\xff\xe0" + bytes(64), "a JPEG image"),
    ("scan.nii.gz", b"\x1f\x8b\x08" + bytes(64), "a gzip-compressed file (a .nii.gz scan?)"),
    ("slice.dcm", bytes(128) + b"DICM" + bytes(64), "a DICOM file"),
    ("legacy.pt", pickle.dumps({"a": 1}, protocol=2), "a Python pickle (protocol 2)"),
    ("junk.bin", b"\x00\x01\x02\xff\xfe" * 10, "unrecognised binary data (first bytes 00 01 02 ff fe 00 01 02)"),
])
def test_what_a_file_is(tmp_path, name, content, kind):
    assert describe_file(_write(tmp_path, name, content)) == kind


def test_a_nifti_scan_and_a_zip_are_recognised(tmp_path):
    scan = save_volume(tmp_path / "scan.nii", np.zeros((2, 8, 8), dtype=np.float32))
    assert describe_file(scan) == "a NIfTI scan"
    assert describe_file(_torch_like_zip(tmp_path / "a.pt")) == "a zip archive"


def test_a_utf8_character_cut_at_the_4kib_boundary_is_still_text(tmp_path):
    path = _write(tmp_path, "long.csv", ("a,b\n" + "é" * 5000).encode())
    assert describe_file(path) == "a CSV text file (first line 'a,b')"


@pytest.mark.parametrize("content", [pickle.dumps([1, 2]), None])
def test_checkpoint_shapes_torch_reads_pass(tmp_path, content):
    path = _torch_like_zip(tmp_path / "best.pt") if content is None else _write(tmp_path, "old.pt", content)
    check_checkpoint_file(path)  # no error: load_checkpoint checks the contents


def _truncated_zip(tmp_path: Path) -> Path:
    full = _torch_like_zip(tmp_path / "full.pt").read_bytes()
    return _write(tmp_path, "best.pt", full[: len(full) // 2])


@pytest.mark.parametrize(("make", "problem"), [
    (lambda t: t / "missing.pt", "checkpoint file not found"),
    (lambda t: t, r"is a directory, expected the checkpoint file \(e.g. best.pt\)"),
    (lambda t: _write(t, "history.csv", b"epoch,loss\n1,2\n"),
     "not a readable PyTorch checkpoint: the file is a CSV text file"),
    (lambda t: _write(t, "figure.png", b"\x89PNG\r\n\x1a\n" + bytes(99)),
     "not a readable PyTorch checkpoint: the file is a PNG image"),
    (lambda t: _write(t, "best.pt", b""), r"not a readable PyTorch checkpoint: the file is empty \(0 bytes\)"),
    (_truncated_zip, "not a readable PyTorch checkpoint: a truncated or damaged zip archive"),
    (lambda t: _torch_like_zip(t / "other.zip", ("readme.txt",)),
     "a zip archive of 1 file.* without the data.pkl"),
])
def test_what_cannot_be_a_checkpoint_is_refused_naming_the_file(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(CheckpointError, match=problem) as info:
        check_checkpoint_file(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_a_fifo_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "best.pt"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="FIFO"):
        check_checkpoint_file(fifo)


def test_sniffing_does_not_import_torch_or_numpy(tmp_path):
    path = _write(tmp_path, "history.csv", b"a,b\n")
    code = ("import sys; from ichlib.io.sniff import check_checkpoint_file\n"
            f"try: check_checkpoint_file({str(path)!r})\nexcept Exception as e: print(type(e).__name__)\n"
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.split("\n")[:2] == ["CheckpointError", "[]"], done.stderr
    assert done.stderr == ""
