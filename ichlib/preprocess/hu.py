"""HU bands and the masks built from them: the one home of "what counts as blood, brain, bone".

Both model-free baselines use these: the scan classifier (:mod:`ichlib.training.baseline`)
and the intensity map Grad-CAM is compared with (:mod:`ichlib.explain.localization`).

Bands (non-contrast head CT): acute blood is hyperdense at about 50-90 HU; grey matter is
about 35-45 HU and white matter 20-30 HU; CSF 0-15 HU; bone is several hundred HU and more.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: HU band counted as hyperdense: acute blood.
BLOOD_HU: tuple[float, float] = (50.0, 90.0)
#: HU band counted as intracranial tissue (CSF, brain, blood).
TISSUE_HU: tuple[float, float] = (0.0, 100.0)
#: Voxels at or above this HU are bone.
BONE_HU = 250.0
#: Pixels next to bone left out of the intracranial mask (partial volume with bone).
BONE_RIM_PX = 1


def intracranial_mask(hu: np.ndarray, rim_px: int = BONE_RIM_PX) -> np.ndarray:
    """Intracranial tissue voxels of a HU volume ``[N, H, W]`` (bool, same shape).

    Per slice: :data:`TISSUE_HU` voxels inside the filled outline of the skull
    (>= :data:`BONE_HU`), except those within ``rim_px`` pixels (8-connected) of bone: after
    resizing, pixels that straddle bone and brain average to 50-90 HU and would pass for
    blood. If no slice has a closed outline, every tissue-band voxel of the volume is
    returned.
    """
    hu = np.asarray(hu, dtype=np.float32)
    tissue = (hu >= TISSUE_HU[0]) & (hu <= TISSUE_HU[1])
    bone = hu >= BONE_HU
    inside = np.zeros_like(bone)
    near_bone = np.ones((3, 3), dtype=bool)
    for k in range(hu.shape[0]):
        if bone[k].any():
            rim = ndimage.binary_dilation(bone[k], structure=near_bone, iterations=rim_px) if rim_px else False
            inside[k] = ndimage.binary_fill_holes(bone[k]) & ~rim
    brain = tissue & inside
    return brain if brain.any() else tissue


def in_band(hu: np.ndarray, band: tuple[float, float] = BLOOD_HU) -> np.ndarray:
    """``low <= hu <= high`` (bool, same shape)."""
    hu = np.asarray(hu)
    return (hu >= band[0]) & (hu <= band[1])


def head_mask(hu: np.ndarray, threshold: float = -300.0) -> np.ndarray:
    """Voxels inside the head ``[N, H, W]``: above ``threshold`` HU, holes filled per slice."""
    inside = np.asarray(hu) > threshold
    return np.stack([ndimage.binary_fill_holes(s) for s in inside])
