"""The run folder of one training: held by one process, never mixed with an older run.

- **Lock.** :func:`run_folder` takes an exclusive ``flock`` on ``OUT/.ichlib-run.lock`` for
  the whole run and writes its pid, host and start time into it. A second run into the same
  folder fails at once, naming the process that holds it. The kernel drops the lock when
  its process dies (even by SIGKILL); the next run finds the dead process's lock file,
  takes it over and says so.
- **An older run.** A folder holding a run's files (``metrics.json``, ``last.pt``, ...) is
  refused (``existing="refuse"``, the command line's default: ``--resume`` continues it,
  ``--overwrite`` replaces it) or cleared (``existing="clear"``), and either is said.
  ``resume`` keeps it.
- **Stale temporary files** of a killed writer (:func:`ichlib.io.atomic.remove_stale_temporaries`)
  are removed when the run starts, and how many is said.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ichlib.errors import ConfigError, DataError, IchlibError
from ichlib.io.atomic import remove_stale_temporaries, write_failure_reason

#: The lock file inside a run folder.
LOCK_NAME = ".ichlib-run.lock"
#: The files a run writes into its folder (two-stage runs add stage1.pt).
RUN_FILES = ("best.pt", "last.pt", "stage1.pt", "history.csv", "metrics.json")
#: What may happen to a folder that holds an older run.
EXISTING_CHOICES = ("refuse", "clear")
#: Temporary files in a shared cache younger than this may belong to a live run.
CACHE_TEMPORARY_AGE_S = 600.0


class RunFolderWarning(UserWarning):
    """Something about the run folder the user should know: a stale lock taken over, an older
    run cleared, leftovers of a killed run removed."""


@dataclass
class RunProgress:
    """How far a run got, for the message when it is interrupted.

    Attributes:
        out_dir: The run folder.
        epochs: Epochs planned.
        epochs_saved: Epochs whose ``last.pt`` is on disk.
    """

    out_dir: Path
    epochs: int
    epochs_saved: int = 0

    def interrupted_message(self) -> str:
        """What was saved, and how to go on."""
        if self.epochs_saved == 0:
            return (f"interrupted before the first epoch was saved; nothing to resume in {self.out_dir} "
                    "(the volume cache built so far is kept)")
        return (f"interrupted; {self.out_dir / 'last.pt'} holds epoch {self.epochs_saved} of "
                f"{self.epochs}. Run the same command with --resume to continue from there.")


@contextlib.contextmanager
def run_folder(out: str | os.PathLike, epochs: int, resume: bool = False, existing: str = "clear",
               main: bool = True, cache_dir: str | os.PathLike | None = None) -> Iterator[RunProgress]:
    """Hold ``out`` for one run (see the module docstring).

    Args:
        out: The run folder (created if needed).
        epochs: Epochs planned (for :class:`RunProgress`).
        resume: The run continues the one in ``out``.
        existing: ``"refuse"`` or ``"clear"`` a folder holding an older run (without ``resume``).
        main: This process writes the files (False on the other ``torchrun`` ranks, which
            only check).
        cache_dir: The volume cache, whose stale temporary files are removed too.

    Raises:
        IchlibError: The folder is in use by another process, or holds an older run and
            ``existing="refuse"``.
        DataError: The folder cannot be created.
    """
    if existing not in EXISTING_CHOICES:
        raise ConfigError(f"existing must be one of {', '.join(EXISTING_CHOICES)}, got {existing!r}")
    out = Path(out)
    _make_folder(out)
    if not main:
        _check_older_run(out, resume, existing)
        yield RunProgress(out, epochs)
        return
    with _locked(out):
        _check_older_run(out, resume, existing)
        if not resume and existing == "clear":
            _clear(out)
        _remove_leftovers(out, cache_dir)
        yield RunProgress(out, epochs)


def older_run(out: Path) -> str | None:
    """What older run ``out`` holds, in words, or None."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    if not found:
        return None
    epochs = _history_rows(out / "history.csv")
    state = "a finished run" if "metrics.json" in found else "an unfinished run"
    saved = f", {epochs} epoch(s) in history.csv" if epochs else ""
    return f"{state} ({', '.join(found)}{saved})"


def _check_older_run(out: Path, resume: bool, existing: str) -> None:
    if resume or existing != "refuse":
        return
    what = older_run(out)
    if what is not None:
        raise IchlibError(f"{out}: the folder holds {what}. Pass --resume to continue it (a finished "
                          "run is evaluated again), --overwrite to replace it, or choose a new --out.")


def _clear(out: Path) -> None:
    what = older_run(out)
    if what is None:
        return
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    warnings.warn(f"{out}: removed {what} to start a new run there", RunFolderWarning, stacklevel=4)


def _remove_leftovers(out: Path, cache_dir: str | os.PathLike | None) -> None:
    removed = remove_stale_temporaries(out)
    if cache_dir is not None:
        removed += remove_stale_temporaries(cache_dir, older_than_s=CACHE_TEMPORARY_AGE_S)
    if removed:
        size = sum(n for _, n in removed)
        warnings.warn(f"removed {len(removed)} stale temporary file(s) left by a killed run "
                      f"({size / 1e6:.1f} MB), e.g. {removed[0][0]}", RunFolderWarning, stacklevel=4)


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """An exclusive lock on ``out``'s lock file for the block; the file names its holder."""
    lock = out / LOCK_NAME
    fd = _open_locked(lock, out)
    try:
        previous = _holder(fd)
        if previous:
            warnings.warn(f"{out}: took over the lock of a run that no longer runs ({previous.strip()}); "
                          "it was probably killed", RunFolderWarning, stacklevel=5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, _me().encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):  # an ended run leaves no lock file behind
            os.ftruncate(fd, 0)
            lock.unlink()
        os.close(fd)


def _open_locked(lock: Path, out: Path) -> int:
    """Open and lock the lock file; retried when another run removed it in between."""
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise DataError(lock, f"cannot create the run folder's lock file: "
                                  f"{write_failure_reason(exc, out)}") from exc
        try:
            _acquire(fd, lock, out)
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # locked a file the previous holder had just removed: lock the new one
    raise IchlibError(f"{out}: could not lock the run folder (lock file {lock} keeps changing)")


def _acquire(fd: int, lock: Path, out: Path) -> None:
    """``flock`` the file, or raise naming who holds it (a file system without flock falls
    back to asking whether the recorded process is alive)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        holder = _holder(fd) or "another process"
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        holder = _holder(fd)
        if not holder or not _alive(holder):
            return
    raise IchlibError(f"{out}: the run folder is in use by {holder} (lock file {lock}). Wait for that "
                      "run to end or stop it, or choose another --out.")


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    return ""


def _me() -> str:
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"pid {os.getpid()} on host {socket.gethostname()}, started {started}\n"


def _alive(holder: str) -> bool:
    """Whether the process a lock file names still runs (only knowable on this host)."""
    parts = holder.split()
    try:
        pid, host = int(parts[1]), parts[4].rstrip(",")
    except (IndexError, ValueError):
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(out, "the run folder is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(out, f"cannot create the run folder: {write_failure_reason(exc, _existing_parent(out))}") from exc


def _existing_parent(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path("/")


def _history_rows(path: Path) -> int:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return max(0, len(path.read_text(encoding="utf-8").splitlines()) - 1)
    return 0
