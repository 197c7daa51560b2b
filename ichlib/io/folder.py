"""The one front door to a dataset folder: which layout it has, and reading it."""

from __future__ import annotations

import os
from pathlib import Path

from ichlib.errors import DataError
from ichlib.io.ctich import LABEL_CSV as CT_ICH_LABEL_CSV
from ichlib.io.ctich import read_ct_ich
from ichlib.io.rsna import RSNA_LABEL_CSVS, read_rsna
from ichlib.io.tables import CtIchData


def detect_format(root: str | os.PathLike) -> str:
    """Say which layout a dataset folder has: ``"rsna"`` or ``"ct-ich"``.

    Raises:
        DataError: If the folder is missing or has neither layout's files.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder not found" if not root.exists() else "not a folder")
    if any((root / name).is_file() for name in RSNA_LABEL_CSVS):
        return "rsna"
    if (root / "ct_scans").is_dir() or (root / CT_ICH_LABEL_CSV).is_file():
        return "ct-ich"
    raise DataError(root, f"unknown dataset layout: expected {RSNA_LABEL_CSVS[0]} (RSNA 2019) or "
                          f"ct_scans/ and {CT_ICH_LABEL_CSV} (PhysioNet CT-ICH)")


def read_dataset(root: str | os.PathLike, on_error: str = "raise", **kwargs) -> CtIchData:
    """Read a CT-ICH or RSNA folder, whichever it is (see :func:`detect_format`).

    A folder of neither layout goes to the CT-ICH reader, which says what is missing.

    Args:
        root: The dataset folder.
        on_error: ``"raise"`` or ``"skip"``, as for both readers.
        **kwargs: Passed to :func:`read_rsna` (``cache_dir``, ``workers``, ...) for RSNA.
    """
    try:
        fmt = detect_format(root)
    except DataError:
        fmt = "ct-ich"
    if fmt == "rsna":
        return read_rsna(root, on_error=on_error, **kwargs)
    return read_ct_ich(root, on_error=on_error)


SYNTHETIC_MARKER = "synthetic.json"


def is_synthetic(data_dir: str | os.PathLike) -> bool:
    """True when the folder was written by the phantom generator."""
    return (Path(data_dir) / SYNTHETIC_MARKER).exists()
