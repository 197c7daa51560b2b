"""The synthetic head-CT phantom: CT-ICH layout (NIfTI) and RSNA 2019 layout (DICOM).

Everything it writes is SYNTHETIC: no patient data is used or reproduced.
"""

from ichlib._lazy import lazy_exports

_NAMES = {
    "Phantom": ".phantom",
    "make_phantom": ".phantom",
    "plan_subtypes": ".writer",
    "write_synthetic_ct_ich": ".writer",
    "write_synthetic_rsna": ".rsna",
}
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
__all__ = sorted(_NAMES)
