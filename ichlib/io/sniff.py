"""What a file is, from its first bytes, and whether it can be a PyTorch checkpoint.

Used before PyTorch is imported, so ``ichlib predict`` refuses a missing path, a folder, or a
CSV, PNG, empty or truncated file given as ``--checkpoint`` at once, saying what the file is.
Nothing here imports PyTorch or NumPy.
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

from ichlib.errors import CheckpointError, DataError
from ichlib.io.files import regular_file

#: Bytes read to tell what a file is.
_HEAD_BYTES = 4096

#: Leading bytes of common formats, and what to call them.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"%PDF", "a PDF document"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x1f\x8b", "a gzip-compressed file (a .nii.gz scan?)"),
    (b"PK\x03\x04", "a zip archive"),
    (b"PK\x05\x06", "an empty zip archive"),
)

#: What ``torch.load`` reads: a zip archive (torch >= 1.6) or a pickle (the legacy format).
_PICKLE_PROTOCOLS = (2, 3, 4, 5)


def describe_file(path: str | os.PathLike) -> str:
    """What the file at ``path`` looks like, in a few words (``"a PNG image"``).

    Reads at most 4 KiB. Knows PyTorch checkpoints (zip or pickle), NIfTI, DICOM, images,
    gzip, zip, NumPy, HDF5, PDF and text (CSV named by its first line).

    Raises:
        OSError: If the file cannot be read.
    """
    with open(path, "rb") as fh:
        head = fh.read(_HEAD_BYTES)
    if not head:
        return "empty (0 bytes)"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in _PICKLE_PROTOCOLS:
        return f"a Python pickle (protocol {head[1]})"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "a DICOM file"
    if len(head) >= 348 and {*struct.unpack("<i", head[:4]), *struct.unpack(">i", head[:4])} & {348, 540}:
        return "a NIfTI scan"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return _describe_text(head)


def _describe_text(head: bytes) -> str:
    """``head`` as text (CSV when its first line has commas), or unrecognised binary data."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not merely a character cut at the 4 KiB boundary
            return f"unrecognised binary data (first bytes {head[:8].hex(' ')})"
        text = head[:exc.start].decode("utf-8")
    if "\x00" in text:
        return f"unrecognised binary data (first bytes {head[:8].hex(' ')})"
    first = text.lstrip("\ufeff").splitlines()[0] if text.strip() else ""
    shown = first if len(first) <= 60 else first[:57] + "..."
    if first.count(",") >= 1:
        return f"a CSV text file (first line {shown!r})"
    return f"a text file (first line {shown!r})" if first else "a text file of blank lines"


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """Refuse what cannot be a PyTorch checkpoint, without importing PyTorch.

    Accepts a complete zip archive holding ``data.pkl`` (what ``torch.save`` writes) and a
    pickle (the legacy format); :func:`ichlib.checkpoint.load_checkpoint` then checks the
    contents.

    Raises:
        CheckpointError: Naming the file and saying what it is: missing, a folder, not a
            regular file, unreadable, empty, a truncated or foreign zip archive, or another
            kind of file (a CSV, an image, a scan...).
    """
    path = Path(path)
    try:
        regular_file(path, "checkpoint file")
        kind = describe_file(path)
    except DataError as exc:
        raise CheckpointError(path, exc.problem + (" (e.g. best.pt)" if "directory" in exc.problem
                                                   else "")) from None
    except OSError as exc:
        raise CheckpointError(path, f"cannot read the checkpoint file ({exc.strerror or exc})") from exc
    if kind.startswith("a Python pickle"):
        return
    if kind == "a zip archive":
        _check_torch_zip(path)
        return
    raise CheckpointError(path, f"not a readable PyTorch checkpoint: the file is {kind}")


def _check_torch_zip(path: Path) -> None:
    """A zip archive whose directory can be read and that holds ``data.pkl``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(path, "not a readable PyTorch checkpoint: a truncated or damaged zip "
                                    f"archive ({exc}); was the copy or download cut short?") from None
    if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        raise CheckpointError(path, f"not a readable PyTorch checkpoint: a zip archive of "
                                    f"{len(names)} file(s) without the data.pkl torch.save writes")
