"""A scan's Grad-CAM in the scan's own geometry: explain a file, put the maps back into the
scan, and export them as a NIfTI that overlays the scan in any viewer."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ichlib.errors import ConfigError, DataError
from ichlib.explain.cam import DEFAULT_CAM, CamSpec, ScanCAM, whole_scan_grad_cam
from ichlib.io.load import is_dicom_series, load_volume
from ichlib.io.nifti import save_like, save_volume
from ichlib.io.volume import Volume
from ichlib.preprocess.dataset import PreprocessConfig, prepare_scan
from ichlib.preprocess.resize import resize_slices
from ichlib.preprocess.sampling import covering_indices


@dataclass
class ScanExplanation:
    """Grad-CAM of one scan file, with what it was computed from.

    Attributes:
        volume: The scan as read.
        x: The model input ``[S, C, H, W]``.
        cam: The maps and scores (:class:`~ichlib.explain.cam.ScanCAM`).
    """

    volume: Volume
    x: torch.Tensor
    cam: ScanCAM

    def map_volume(self) -> np.ndarray:
        """The maps in the scan's geometry ``[N, H, W]`` (see :func:`maps_to_volume`)."""
        return maps_to_volume(self.cam.maps, self.cam.slice_indices, self.volume.hu.shape)


def explain_scan(model: nn.Module, config: PreprocessConfig, scan_path: str | os.PathLike,
                 label: str | None = None, cam: CamSpec = DEFAULT_CAM) -> ScanExplanation:
    """Read a scan, prepare every slice as for prediction, and compute a scan-normalised
    Grad-CAM for every slice (:func:`~ichlib.explain.cam.whole_scan_grad_cam`).

    Args:
        model: Trained model (its device is used).
        config: The preprocessing the model was trained with.
        scan_path: A NIfTI file or a DICOM series.
        label: Label to explain; None for the most probable one.
        cam: The ``grad-cam`` method and target layer(s) (default: Grad-CAM at ``layer4``).

    Raises:
        DataError: If the scan cannot be read.
    """
    volume = load_volume(scan_path)
    x, _ = prepare_scan(volume.hu, config, np.arange(volume.n_slices))
    samplings = covering_indices(volume.n_slices, config.seq_len)
    return ScanExplanation(volume, x, whole_scan_grad_cam(model, x, samplings, label, method=cam.method,
                                                           target_layer=list(cam.layers)))


def maps_to_volume(maps: np.ndarray, slice_indices: np.ndarray,
                   shape: tuple[int, int, int]) -> np.ndarray:
    """Place sampled-slice maps ``[S, h, w]`` into a scan-shaped volume ``[N, H, W]``.

    Maps are resized in-plane to ``(H, W)`` (bilinear, see
    :func:`~ichlib.preprocess.resize.resize_slices`) and written at ``slice_indices``;
    slices that were not sampled are 0. A slice sampled more than once (short scans) gets
    the maximum of its maps.
    """
    n, height, width = (int(s) for s in shape)
    slice_indices = np.asarray(slice_indices, dtype=np.int64)
    if len(slice_indices) != len(maps):
        raise ConfigError(f"{len(maps)} maps but {len(slice_indices)} slice indices")
    if len(slice_indices) and (slice_indices.min() < 0 or slice_indices.max() >= n):
        raise ConfigError(f"slice indices {slice_indices.min()}..{slice_indices.max()} are outside "
                          f"a scan of {n} slices")
    resized = np.clip(resize_slices(np.asarray(maps, dtype=np.float32), (height, width)).numpy(),
                      0.0, None)
    volume = np.zeros((n, height, width), dtype=np.float32)
    for pos, k in enumerate(slice_indices):
        np.maximum(volume[k], resized[pos], out=volume[k])
    return volume


def save_cam_nifti(path: str | os.PathLike, volume: np.ndarray, like: str | os.PathLike,
                   spacing: tuple[float, float, float] | None = None) -> Path:
    """Write a float32 map volume ``[N, H, W]`` aligned with the scan ``like``.

    For a NIfTI scan the file copies its header geometry (:func:`~ichlib.io.nifti.save_like`),
    so it overlays the scan in ITK-SNAP, 3D Slicer or SimpleITK. A DICOM series has no
    NIfTI affine to copy: the maps are written with the series' voxel ``spacing``.
    """
    if is_dicom_series(like):
        if spacing is None:
            raise ConfigError(f"{like} is a DICOM series: pass its voxel spacing")
        if not all(math.isfinite(float(s)) and float(s) > 0 for s in spacing):
            raise DataError(like, f"voxel spacing {tuple(float(s) for s in spacing)} is not positive "
                                  "and finite; the maps cannot be placed in its geometry")
        return save_volume(path, volume, spacing=spacing, dtype=np.float32)
    return save_like(path, volume, like, description="ichlib Grad-CAM, 0..1")
