"""From HU volumes to model input: windows, resizing, slice sampling, augmentation, splits,
the resized-volume cache and the dataset that yields ``[S, C, H, W]`` items."""

from ichlib._lazy import lazy_exports

_NAMES = {
    "ScanAugment": ".augment",
    "VolumeCache": ".cache",
    "PreprocessConfig": ".dataset",
    "ScanDataset": ".dataset",
    "prepare_scan": ".dataset",
    "sampled_mask": ".dataset",
    "BLOOD_HU": ".hu",
    "in_band": ".hu",
    "intracranial_mask": ".hu",
    "resize_slices": ".resize",
    "uniform_indices": ".sampling",
    "cv_split": ".splits",
    "iterative_stratification": ".splits",
    "kfold_split": ".splits",
    "patient_split": ".splits",
    "rsna_group_split": ".splits",
    "WINDOWS": ".windowing",
    "lesion_contrast": ".windowing",
    "multi_window": ".windowing",
    "window": ".windowing",
}
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
__all__ = sorted(_NAMES)
