"""What a path must be before ichlib reads it: a regular file (not a FIFO, device, socket or
folder, also behind a symbolic link) of a size ichlib is willing to read.

A FIFO makes a reader wait forever and ``/dev/zero`` never ends, so both are refused before
they are opened, with the file named.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ichlib.errors import DataError

#: Largest label table read (RSNA 2019's stage_2_train.csv is about 120 MB).
MAX_TABLE_BYTES = 1 << 30
#: Largest ``.series`` manifest read (one path per line).
MAX_MANIFEST_BYTES = 64 << 20
#: Largest DICOM file read (one CT slice is well under 1 MB; an enhanced CT a few hundred MB).
MAX_DICOM_BYTES = 4 << 30

_KINDS = {stat.S_IFIFO: "FIFO (named pipe)", stat.S_IFCHR: "character device",
          stat.S_IFBLK: "block device", stat.S_IFSOCK: "socket"}


def regular_file(path: str | os.PathLike, what: str, max_bytes: int | None = None) -> int:
    """Check that ``path`` is a regular file of at most ``max_bytes``; return its size.

    Args:
        path: The file (a symbolic link is followed).
        what: What it should be, for messages ("label CSV").
        max_bytes: Largest size accepted (None: any).

    Raises:
        DataError: Naming the path: missing, a folder, not a regular file (and what it is,
            and where a link points), unreadable, or too large.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DataError(path, f"{what} not found") from None
    except OSError as exc:
        raise DataError(path, f"cannot read the {what} ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(info.st_mode):
        raise DataError(path, f"is a directory, expected the {what}")
    if not stat.S_ISREG(info.st_mode):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "special file")
        link = f" (a link to {os.path.realpath(path)})" if path.is_symlink() else ""
        raise DataError(path, f"is a {kind}{link}, not a regular file; refusing to read it as the {what}")
    if max_bytes is not None and info.st_size > max_bytes:
        raise DataError(path, f"the {what} is {info.st_size / 1e6:.0f} MB, more than the "
                              f"{max_bytes / 1e6:.0f} MB ichlib reads; is it the right file?")
    return info.st_size
