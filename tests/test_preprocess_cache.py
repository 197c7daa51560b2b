"""The volume cache checks every entry (record, checksum, shape, finite) before using it, and
rebuilds a damaged one from its scan with a warning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ichlib.errors import DataError
from ichlib.io.ctich import read_ct_ich
from ichlib.preprocess.cache import CacheWarning, VolumeCache
from ichlib.preprocess.dataset import PreprocessConfig, ScanDataset


def _header_bytes(entry) -> int:
    with open(entry, "rb") as fh:
        np.lib.format.read_magic(fh)
        np.lib.format.read_array_header_1_0(fh)
        return fh.tell()


def _rewrite_record(entry, volume: np.ndarray) -> None:
    """Make the record agree with ``volume`` (a damage the checksum alone would not see)."""
    import zlib

    record = entry.with_name(entry.name + ".json")
    doc = json.loads(record.read_text())
    doc["shape"] = list(volume.shape)
    doc["crc32"] = zlib.crc32(np.ascontiguousarray(volume).view(np.uint8).reshape(-1)) & 0xFFFFFFFF
    record.write_text(json.dumps(doc))


def _nan(entry) -> None:
    volume = np.load(entry).copy()
    volume[0, 3, 3] = np.nan
    np.save(entry, volume)
    _rewrite_record(entry, volume)


def _bit_flip(entry) -> None:
    raw = bytearray(entry.read_bytes())
    raw[_header_bytes(entry) + 101] ^= 0x04
    entry.write_bytes(bytes(raw))


def _truncated(entry) -> None:
    entry.write_bytes(entry.read_bytes()[:-100])


def _wrong_in_plane_size(entry) -> None:
    volume = np.zeros((6, 8, 8), np.float16)
    np.save(entry, volume)
    _rewrite_record(entry, volume)


def _wrong_slice_count(entry) -> None:
    volume = np.load(entry)[:4].copy()
    np.save(entry, volume)
    _rewrite_record(entry, volume)


def _float32(entry) -> None:
    volume = np.load(entry).astype(np.float32)
    np.save(entry, volume)
    _rewrite_record(entry, volume)


def _no_record(entry) -> None:
    entry.with_name(entry.name + ".json").unlink()


def _junk(entry) -> None:
    entry.write_bytes(b"junk")


DAMAGE = {
    "nan": (_nan, "holds NaN or Inf"),
    "bit_flip": (_bit_flip, r"does not match its checksum \(damaged on disk\)"),
    "truncated": (_truncated, "unreadable"),
    "wrong_in_plane_size": (_wrong_in_plane_size, r"has shape \(6, 8, 8\)"),
    "wrong_slice_count": (_wrong_slice_count, "has 4 slices, the scan's labels 6"),
    "float32": (_float32, "holds float32 values"),
    "no_record": (_no_record, "has no readable record"),
    "junk": (_junk, "unreadable"),
}


@pytest.mark.parametrize("case", list(DAMAGE), ids=list(DAMAGE))
def test_a_damaged_entry_is_rebuilt_with_a_warning(case, small_ct_ich, tmp_path):
    data = read_ct_ich(small_ct_ich)
    scan = data.scans["049"]  # 6 slices
    good = np.array(VolumeCache(tmp_path / "c", 16).get(scan, n_slices=6))
    damage, problem = DAMAGE[case]
    entry = VolumeCache(tmp_path / "c", 16).path_for(scan)
    damage(entry)
    cache = VolumeCache(tmp_path / "c", 16)  # a new process: nothing checked yet
    with pytest.warns(CacheWarning, match=problem) as caught:
        volume = cache.get(scan, n_slices=6)
    message = str(caught[0].message)
    assert message.startswith(f"{entry}: the cache entry of {scan} ") and "rebuilding it" in message
    np.testing.assert_array_equal(np.array(volume), good)
    with np.testing.assert_no_warnings():
        np.testing.assert_array_equal(np.array(VolumeCache(tmp_path / "c", 16).get(scan, 6)), good)


def test_a_damaged_entry_does_not_stop_training_items(small_ct_ich, tmp_path):
    """A wrong-size entry used to crash training mid-epoch; now the item is rebuilt."""
    data = read_ct_ich(small_ct_ich)
    config = PreprocessConfig(img_size=16, seq_len=4)
    ds = ScanDataset(data, data.patient_ids, config, cache_dir=tmp_path / "c")
    expected = ds[1]["x"]
    _wrong_slice_count(VolumeCache(tmp_path / "c", 16).path_for(data.scans["050"]))
    fresh = ScanDataset(data, data.patient_ids, config, cache_dir=tmp_path / "c")
    with pytest.warns(CacheWarning, match="has 4 slices, the scan's labels 8"):
        item = fresh[1]
    assert item["patient_id"] == "050"
    np.testing.assert_array_equal(item["x"].numpy(), expected.numpy())


def test_a_scan_whose_slices_differ_from_its_labels_is_a_data_error(small_ct_ich, tmp_path):
    data = read_ct_ich(small_ct_ich)
    with pytest.raises(DataError, match="the scan has 6 slices, its labels 7") as info:
        VolumeCache(tmp_path / "c", 16).get(data.scans["049"], n_slices=7)
    assert info.value.path == str(data.scans["049"])


def test_an_entry_is_checked_once_per_process(small_ct_ich, tmp_path, monkeypatch):
    data = read_ct_ich(small_ct_ich)
    cache = VolumeCache(tmp_path / "c", 16)
    cache.get(data.scans["049"])
    calls = []
    monkeypatch.setattr(VolumeCache, "_problem", lambda self, *a: calls.append(a) or None)
    for _ in range(3):
        cache.get(data.scans["049"])
    assert calls == []  # built here: already known good
    VolumeCache(tmp_path / "c", 16).get(data.scans["049"])
    assert len(calls) == 1
