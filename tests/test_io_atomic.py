import os

import pytest

from ichlib.errors import IchlibError
from ichlib.io.atomic import atomic_open, atomic_path, atomic_write_text


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
    with pytest.raises(IchlibError, match="f.bin.*No space left") as info:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x")
            raise OSError(28, "No space left on device")
    assert "previous version is left intact" in str(info.value)
    assert target.read_text() == "keep me"
    assert os.listdir(tmp_path) == ["f.bin"]
