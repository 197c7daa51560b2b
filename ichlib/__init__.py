"""ichlib: intracranial hemorrhage detection on head CT with a CNN + BiLSTM.

The public names below are the ones the notebooks and users rely on; keep them stable.
Results on the synthetic phantom are synthetic: nothing here is a clinical tool.
"""

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
]
