"""ichlib: intracranial hemorrhage detection on head CT with a CNN + BiLSTM.

The public names below are the ones the notebooks and users rely on; keep them stable.
Results on the synthetic phantom are synthetic: nothing here is a clinical tool.

The model, training and Grad-CAM names are imported on first use, so ``import ichlib``
stays quick for data work (the ``grad-cam`` package alone takes seconds to import).
"""

from importlib import import_module

from ichlib.ctich import CtIchData, Problem, read_ct_ich
from ichlib.dataset import PreprocessConfig, ScanDataset, prepare_scan
from ichlib.errors import CheckpointError, ConfigError, DataError, IchlibError
from ichlib.labels import LABELS, SUBTYPES
from ichlib.resize import resize_slices
from ichlib.sampling import uniform_indices
from ichlib.splits import kfold_split, patient_split
from ichlib.volumes import Volume, load_mask, load_volume
from ichlib.windowing import WINDOWS, multi_window, window

__version__ = "0.1.0"

_LAZY = {
    "CNNBiLSTM": "ichlib.model",
    "ModelOutput": "ichlib.model",
    "TrainConfig": "ichlib.train",
    "fit": "ichlib.train",
    "train_one_epoch": "ichlib.train",
    "evaluate": "ichlib.train",
    "load_checkpoint": "ichlib.checkpoint",
    "model_from_checkpoint": "ichlib.checkpoint",
    "predict_scan": "ichlib.predict",
    "predict_files": "ichlib.predict",
    "scan_grad_cam": "ichlib.cam",
    "ScanCAM": "ichlib.cam",
    "ScanLabelTarget": "ichlib.cam",
    "SliceLabelTarget": "ichlib.cam",
    "write_cam_report": "ichlib.cam",
    "cascading_randomization": "ichlib.localization",
    "intensity_baseline": "ichlib.localization",
    "energy_in_mask": "ichlib.localization",
    "pointing_game": "ichlib.localization",
    "localization_table": "ichlib.localization",
    "collect_localization": "ichlib.localization",
    "load_dicom_series": "ichlib.dicom",
    "read_rsna": "ichlib.rsna",
    "write_synthetic_ct_ich": "ichlib.phantom",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ichlib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "LABELS",
    "SUBTYPES",
    "WINDOWS",
    "CheckpointError",
    "ConfigError",
    "CtIchData",
    "DataError",
    "IchlibError",
    "PreprocessConfig",
    "Problem",
    "ScanDataset",
    "Volume",
    "__version__",
    "kfold_split",
    "load_mask",
    "load_volume",
    "multi_window",
    "patient_split",
    "prepare_scan",
    "read_ct_ich",
    "resize_slices",
    "uniform_indices",
    "window",
    *_LAZY,
]
