"""Reading data: scans (NIfTI, DICOM), label tables (CT-ICH, RSNA), dataset checks, safe writes.

The lowest layer of ichlib: nothing here imports preprocessing, models or training. Plumbing
that other layers use (atomic writes, file sniffing, size limits) is imported from its module
(``ichlib.io.atomic``, ``ichlib.io.sniff``, ``ichlib.io.volume``).

Start-up time: every name is imported on first use (``__getattr__`` below), because the fast
paths import single modules of this package and so run this file: ``ichlib predict`` sniffs a
checkpoint file before numpy or torch loads (``ichlib.io.sniff``, refused within 1 s,
``tests/test_cli.py``), and reads scans without pandas (``tests/test_predict.py``). The
imports under ``TYPE_CHECKING`` name them for type checkers and IDEs.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ichlib.io.check import CheckReport, check_dataset, check_rsna
    from ichlib.io.ctich import read_ct_ich
    from ichlib.io.dicom import load_dicom_series
    from ichlib.io.folder import detect_format, read_dataset
    from ichlib.io.load import load_mask, load_volume
    from ichlib.io.nifti import save_mask, save_volume
    from ichlib.io.rsna import DuplicateLabelWarning, RsnaData, read_rsna
    from ichlib.io.tables import (
        CtIchData,
        Problem,
        cooccurrence,
        label_counts,
        largest_lesion_slice,
    )
    from ichlib.io.volume import Volume

#: The names imported on first use, by module.
_ON_FIRST_USE: dict[str, tuple[str, ...]] = {
    "ichlib.io.check": ("CheckReport", "check_dataset", "check_rsna"),
    "ichlib.io.ctich": ("read_ct_ich",),
    "ichlib.io.dicom": ("load_dicom_series",),
    "ichlib.io.folder": ("detect_format", "read_dataset"),
    "ichlib.io.load": ("load_mask", "load_volume"),
    "ichlib.io.nifti": ("save_mask", "save_volume"),
    "ichlib.io.rsna": ("DuplicateLabelWarning", "RsnaData", "read_rsna"),
    "ichlib.io.tables": ("CtIchData", "Problem", "cooccurrence", "label_counts", "largest_lesion_slice"),
    "ichlib.io.volume": ("Volume",),
}
_MODULE_OF = {name: module for module, names in _ON_FIRST_USE.items() for name in names}


if not TYPE_CHECKING:  # type checkers see the imports above, and no catch-all __getattr__
    def __getattr__(name: str) -> object:
        """Import a public name on first use."""
        if name not in _MODULE_OF:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return getattr(import_module(_MODULE_OF[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF})


__all__ = list(_MODULE_OF)
