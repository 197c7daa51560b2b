"""Atomic file writes: write to a temporary name in the same folder, then rename.

An interrupted run therefore leaves either the previous file or the new one, never half
of one. A failed write (read-only file system, full disk, no free inodes, quota,
permission) raises :class:`~ichlib.errors.WriteError` naming the file and the reason in one
line (:class:`~ichlib.errors.WriteError`), removes the temporary file and leaves what was there before untouched.

Files get the permissions ``open()`` would give them (``0o666`` less the umask), not the
``0o600`` of :func:`tempfile.mkstemp`, so a shared data folder stays readable.

Temporary names are ``.NAME.XXXXXXXX.tmpSUFFIX``; :func:`remove_stale_temporaries` removes
those a killed process left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ichlib.errors import WriteError

#: A temporary name made by :func:`atomic_path` (``mkstemp`` adds 8 random characters).
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp(\..*)?$")

#: What an errno means for a write, in words a user can act on.
_REASONS = {
    errno.ENOSPC: "no space left on the device (or no free inodes)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "the path is a folder",
    errno.EFBIG: "the file is too large for the file system",
    errno.EIO: "input/output error",
}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    Use this for writers that want a file name (nibabel, numpy, torch).

    Args:
        path: The final destination.
        suffix: Suffix for the temporary name, for writers that infer the format from it.

    Raises:
        WriteError: A :class:`~ichlib.errors.DataError` if the folder cannot be created or
            the file cannot be written (an ``OSError`` anywhere in the block); no temporary
            file is left.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            os.fchmod(fd, 0o666 & ~current_umask())
        finally:
            os.close(fd)
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        reason = write_failure_reason(exc, path.parent)  # before the temporary file is gone
        _discard(tmp)
        raise WriteError(path, f"could not write the file: {reason}; any previous version is "
                               "left intact") from exc
    except BaseException:
        _discard(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; rename it into place on success."""
    if not any(m in mode for m in "wx"):
        raise ValueError("atomic_open is for writing; use mode 'w' or 'wb'")
    with atomic_path(path) as tmp, open(tmp, mode.replace("x", "w"), **kwargs) as fh:
        yield fh
        fh.flush()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_failure_reason(exc: OSError, folder: str | os.PathLike | None = None) -> str:
    """A short reason for a failed write, from its errno.

    Some writers (numpy's ``tofile``, torch's zip writer) lose the errno; then the file
    system holding ``folder`` is asked whether it is read-only, full or out of inodes.
    """
    code = exc.errno if exc.errno in _REASONS else _errno_from_statvfs(folder)
    if code is not None:
        return _REASONS[code]
    text = exc.strerror or str(exc) or type(exc).__name__
    return " ".join(text.split())  # one line


def _errno_from_statvfs(folder: str | os.PathLike | None) -> int | None:
    """EROFS, ENOSPC (under 1 MiB free, or no free inode) or None, for ``folder``'s file system."""
    if folder is None:
        return None
    with contextlib.suppress(OSError):
        st = os.statvfs(folder)
        if st.f_flag & os.ST_RDONLY:
            return errno.EROFS
        if st.f_bavail * st.f_frsize < 1 << 20 or (st.f_files and not st.f_favail):
            return errno.ENOSPC
    return None


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc``)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def is_temporary(path: str | os.PathLike) -> bool:
    """True for a temporary file name made by :func:`atomic_path`."""
    return bool(_TEMPORARY.match(Path(path).name))


def remove_stale_temporaries(folder: str | os.PathLike, older_than_s: float = 0.0,
                             recursive: bool = False) -> list[tuple[Path, int]]:
    """Delete the temporary files a killed writer left in ``folder``.

    Args:
        folder: Where to look (a missing folder has none).
        older_than_s: Only files not modified for this many seconds (a folder that other
            live processes write into, such as a shared cache, needs a margin; a locked
            run folder needs none).
        recursive: Also look in sub-folders.

    Returns:
        The files removed, each with its size in bytes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    removed = []
    for path in (folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*")):
        with contextlib.suppress(OSError):
            info = path.stat()
            if is_temporary(path) and path.is_file() and now - info.st_mtime >= older_than_s:
                path.unlink()
                removed.append((path, info.st_size))
    return removed


def _discard(tmp: Path | None) -> None:
    if tmp is not None:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
