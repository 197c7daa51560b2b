"""Resized HU volumes cached on disk (float16 ``.npy``), so later epochs never decode a scan again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ichlib.io.atomic import atomic_path
from ichlib.io.load import load_volume
from ichlib.preprocess.resize import resample_volume

CACHE_VERSION = 1


class VolumeCache:
    """Resized HU volumes on disk, one float16 ``.npy`` per (scan file, size).

    The key hashes the scan's resolved path, size and modification time, the image size
    and :data:`CACHE_VERSION`, so an edited scan is rebuilt. Files are written atomically;
    several processes building the same entry at once each write a whole file and the
    last rename wins, so readers never see half a file.

    Args:
        cache_dir: Folder for the cache; created when needed.
        img_size: In-plane size of the cached volumes.
    """

    def __init__(self, cache_dir: str | os.PathLike, img_size: int) -> None:
        self.cache_dir = Path(cache_dir)
        self.img_size = int(img_size)

    def path_for(self, scan_path: Path) -> Path:
        """Cache file for ``scan_path`` (whether or not it exists yet)."""
        stat = scan_path.stat()
        key = f"{scan_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.img_size}|{CACHE_VERSION}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        return self.cache_dir / f"{scan_path.name.split('.')[0]}-{self.img_size}-{digest}.npy"

    def get(self, scan_path: str | os.PathLike) -> np.ndarray:
        """Return the resized HU volume ``[N, img_size, img_size]`` (memory-mapped float16)."""
        scan_path = Path(scan_path)
        cached = self.path_for(scan_path)
        if cached.exists():
            try:
                return np.load(cached, mmap_mode="r")
            except (ValueError, OSError):
                cached.unlink(missing_ok=True)  # unreadable entry: rebuild it
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        resized = resample_volume(load_volume(scan_path).hu, self.img_size).astype(np.float16)
        with atomic_path(cached, suffix=".npy") as tmp:
            np.save(tmp, resized)
        return np.load(cached, mmap_mode="r")
