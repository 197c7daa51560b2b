"""From HU volumes to model input: windows, resizing, slice sampling, augmentation, splits,
the resized-volume cache and the dataset that yields ``[S, C, H, W]`` items.

Start-up time: the HU masks need ``scipy.ndimage`` and the splits need pandas, neither of
which ``ichlib predict`` loads (``tests/test_predict.py``), so their names are imported on
first use (``__getattr__`` below); the imports under ``TYPE_CHECKING`` name them for type
checkers and IDEs.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from ichlib.preprocess.augment import ScanAugment
from ichlib.preprocess.cache import VolumeCache
from ichlib.preprocess.dataset import PreprocessConfig, ScanDataset, prepare_scan, sampled_mask
from ichlib.preprocess.resize import resize_slices
from ichlib.preprocess.sampling import uniform_indices
from ichlib.preprocess.windowing import WINDOWS, lesion_contrast, multi_window, window

if TYPE_CHECKING:
    from ichlib.preprocess.hu import BLOOD_HU, in_band, intracranial_mask
    from ichlib.preprocess.splits import cv_split, kfold_split, patient_split, rsna_group_split

#: The names that need scipy.ndimage or pandas, imported on first use, by module.
_ON_FIRST_USE: dict[str, tuple[str, ...]] = {
    "ichlib.preprocess.hu": ("BLOOD_HU", "in_band", "intracranial_mask"),
    "ichlib.preprocess.splits": ("cv_split", "kfold_split", "patient_split", "rsna_group_split"),
}
_MODULE_OF = {name: module for module, names in _ON_FIRST_USE.items() for name in names}


if not TYPE_CHECKING:  # type checkers see the imports above, and no catch-all __getattr__
    def __getattr__(name: str) -> object:
        """Import a name that needs scipy.ndimage or pandas on first use."""
        if name not in _MODULE_OF:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return getattr(import_module(_MODULE_OF[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF})


__all__ = ["PreprocessConfig", "ScanAugment", "ScanDataset", "VolumeCache", "WINDOWS",
           "lesion_contrast", "multi_window", "prepare_scan", "resize_slices", "sampled_mask",
           "uniform_indices", "window", *_MODULE_OF]
