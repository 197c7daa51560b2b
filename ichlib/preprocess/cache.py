"""Resized HU volumes cached on disk (float16 ``.npy``), so later epochs never decode a scan again.

Every entry has a small JSON record beside it (``ENTRY.npy.json``: shape, dtype, CRC-32 of the
voxels, the scan it came from). An entry is checked against its record, its expected size and
for NaN/Inf the first time a process reads it; a damaged one (truncated, bit-flipped, NaN,
wrong size, unreadable) is rebuilt from the scan with a :class:`CacheWarning`, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zlib
from pathlib import Path

import numpy as np

from ichlib.errors import DataError
from ichlib.io.atomic import atomic_path, atomic_write_text
from ichlib.io.load import load_volume
from ichlib.preprocess.resize import resample_volume

#: Version of the entries' format and key; entries of another version are not read.
CACHE_VERSION = 2
_DTYPE = np.dtype(np.float16)


class CacheWarning(UserWarning):
    """A cache entry was damaged and has been rebuilt from its scan."""


class VolumeCache:
    """Resized HU volumes on disk, one float16 ``.npy`` (and its record) per (scan file, size).

    The key hashes the scan's resolved path, size and modification time, the image size
    and :data:`CACHE_VERSION`, so an edited scan is rebuilt. Files are written atomically,
    the record before the volume; several processes building the same entry at once each
    write whole files with the same content and the last rename wins, so readers never see
    half a file.

    Args:
        cache_dir: Folder for the cache; created when needed.
        img_size: In-plane size of the cached volumes.
    """

    def __init__(self, cache_dir: str | os.PathLike, img_size: int) -> None:
        self.cache_dir = Path(cache_dir)
        self.img_size = int(img_size)
        self._checked: dict[Path, tuple[int, int, int]] = {}  # entry -> (inode, size, mtime)

    def path_for(self, scan_path: Path) -> Path:
        """Cache file for ``scan_path`` (whether or not it exists yet)."""
        stat = scan_path.stat()
        key = f"{scan_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.img_size}|{CACHE_VERSION}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        return self.cache_dir / f"{scan_path.name.split('.')[0]}-{self.img_size}-{digest}.npy"

    def get(self, scan_path: str | os.PathLike, n_slices: int | None = None) -> np.ndarray:
        """Return the resized HU volume ``[N, img_size, img_size]`` (memory-mapped float16).

        Args:
            scan_path: The scan (NIfTI file, DICOM folder or ``.series`` manifest).
            n_slices: The scan's number of slices if known (from its labels); an entry of
                another length is rebuilt, and a scan of another length is a DataError.

        Raises:
            DataError: The scan cannot be read, or has not ``n_slices`` slices.
            WriteError: The entry cannot be written (full or read-only cache folder).
        """
        scan_path = Path(scan_path)
        entry = self.path_for(scan_path)
        volume = self._valid_entry(entry, scan_path, n_slices)
        if volume is None:
            volume = self._build(entry, scan_path)
        if n_slices is not None and volume.shape[0] != n_slices:
            raise DataError(scan_path, f"the scan has {volume.shape[0]} slices, its labels {n_slices}")
        return volume

    def _build(self, entry: Path, scan_path: Path) -> np.ndarray:
        resized = resample_volume(load_volume(scan_path).hu, self.img_size).astype(_DTYPE)
        if not np.isfinite(resized).all():
            raise DataError(scan_path, "values beyond float16's range (about ±65500) after resizing; "
                                       "these are not Hounsfield units")
        record = {"version": CACHE_VERSION, "scan": str(scan_path.resolve()), "shape": list(resized.shape),
                  "dtype": _DTYPE.str, "crc32": _crc32(resized)}
        atomic_write_text(_record_path(entry), json.dumps(record))  # first: an entry has its record
        with atomic_path(entry, suffix=".npy") as tmp:
            np.save(tmp, resized)
        volume = np.load(entry, mmap_mode="r")
        self._checked[entry] = _identity(entry)
        return volume

    def _valid_entry(self, entry: Path, scan_path: Path, n_slices: int | None) -> np.ndarray | None:
        """The entry if it is whole and matches its record; None (after removing it, with a
        warning if it was damaged) if it must be built."""
        if not entry.exists():
            return None
        try:
            identity = _identity(entry)
            volume = np.load(entry, mmap_mode="r")
            problem = None if self._checked.get(entry) == identity else \
                self._problem(entry, volume, n_slices)
        except (ValueError, OSError, EOFError) as exc:
            problem = f"is unreadable ({type(exc).__name__}: {' '.join(str(exc).split())})"
        if problem is None:
            self._checked[entry] = identity
            return volume
        warnings.warn(f"{entry}: the cache entry of {scan_path} {problem}; rebuilding it from the scan",
                      CacheWarning, stacklevel=4)
        self._checked.pop(entry, None)
        for path in (entry, _record_path(entry)):
            path.unlink(missing_ok=True)
        return None

    def _problem(self, entry: Path, volume: np.ndarray, n_slices: int | None) -> str | None:
        """What is wrong with a readable entry, or None."""
        try:
            record = json.loads(_record_path(entry).read_text(encoding="utf-8"))
            expected_shape, crc = tuple(record["shape"]), int(record["crc32"])
        except (OSError, ValueError, KeyError, TypeError):
            return "has no readable record of its shape and checksum"
        if volume.dtype != _DTYPE:
            return f"holds {volume.dtype} values, not {_DTYPE}"
        if volume.ndim != 3 or volume.shape[1:] != (self.img_size, self.img_size) \
                or volume.shape != expected_shape:
            return f"has shape {volume.shape}, its record says {expected_shape}"
        if n_slices is not None and volume.shape[0] != n_slices:
            return f"has {volume.shape[0]} slices, the scan's labels {n_slices}"
        if _crc32(volume) != crc:
            return "does not match its checksum (damaged on disk)"
        if not np.isfinite(volume).all():
            return "holds NaN or Inf"
        return None


def _record_path(entry: Path) -> Path:
    return entry.with_name(entry.name + ".json")


def _crc32(volume: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(volume).view(np.uint8).reshape(-1)) & 0xFFFFFFFF


def _identity(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
