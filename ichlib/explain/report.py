"""A scan's Grad-CAM report: explain a scan file, put the maps back into the scan's own
geometry, and write them out (:func:`write_cam_report`): a NIfTI that overlays the scan in any
viewer, and a figure drawn by :mod:`ichlib.viz` (which only draws; this module decides what is
written, under which names)."""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ichlib.errors import ConfigError, DataError
from ichlib.explain.cam import DEFAULT_CAM, CamSpec, ScanCAM, whole_scan_grad_cam
from ichlib.io.load import is_dicom_series, load_volume
from ichlib.io.nifti import save_like, save_volume
from ichlib.io.volume import Volume
from ichlib.labels import LABELS
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


#: First line of a Grad-CAM figure's title when the model was trained on the phantom.
SYNTHETIC_TITLE = "SYNTHETIC: model trained on the synthetic phantom; not for any clinical use"


class CamFigure(Protocol):
    """Draws one explained scan into a PNG at ``path`` and closes the figure, as
    :func:`ichlib.viz.cam.save_cam_montage` does."""

    def __call__(self, explained: ScanExplanation, path: Path, *, title: str, top_k: int) -> object: ...


def write_cam_report(model: nn.Module, config: PreprocessConfig, scan_path: str | os.PathLike,
                     out_dir: str | os.PathLike, top_k: int = 6, save_nifti: bool = True,
                     label: str | None = None, stem: str | None = None, synthetic: bool = False,
                     *, figure: CamFigure | None = None) -> list[Path]:
    """Explain one scan and write its Grad-CAM report: a figure, and a NIfTI of the maps.

    The scan is explained with :func:`explain_scan` for the patient-level ``label`` (default:
    the label with the highest predicted probability), normalised across the scan.

    Files (``STEM`` is ``stem``, by default the scan's file name without ``.nii``/``.nii.gz``;
    give several scans of one name distinct stems with :func:`unique_stems`):

    - ``STEM_cam_LABEL.png`` (if ``figure`` is given): drawn by ``figure``, e.g.
      :func:`ichlib.viz.cam.save_cam_montage` (the ``top_k`` most important slices, the six
      probabilities in the title);
    - ``STEM_cam_LABEL.nii.gz`` (if ``save_nifti``): float32 maps in [0, 1], same shape and
      geometry as the scan (:func:`save_cam_nifti`); zeros where no map was placed.

    Args:
        model: Trained model (its device is used).
        config: The preprocessing the model was trained with.
        scan_path: A NIfTI CT volume or a DICOM series.
        out_dir: Output folder (created if needed).
        top_k: Number of slices in the figure.
        save_nifti: Write the map volume.
        label: Label to explain; None for the most probable one.
        stem: Output name stem (default: from the scan's file name).
        synthetic: The model was trained on the synthetic phantom: the title says SYNTHETIC.
        figure: Draws the PNG; None writes none.

    Returns:
        The paths written, PNG first.

    Raises:
        ConfigError: If neither a figure nor the NIfTI is asked for.
        DataError: If the scan cannot be read.
    """
    if figure is None and not save_nifti:
        raise ConfigError("nothing to write: pass figure= or save_nifti=True")
    scan_path, out_dir = Path(scan_path), Path(out_dir)
    explained = explain_scan(model, config, scan_path, label)
    result = explained.cam
    name = f"{stem or scan_stem(scan_path)}_cam_{result.label}"
    written = []
    if figure is not None:
        probs = ", ".join(f"{n} {p:.2f}" for n, p in zip(LABELS, result.probabilities, strict=True))
        title = (f"{scan_path.name}: Grad-CAM for '{result.label}' (p = {result.probability:.2f})"
                 f"\n{probs}")
        figure(explained, out_dir / f"{name}.png", top_k=top_k,
               title=f"{SYNTHETIC_TITLE}\n{title}" if synthetic else title)
        written.append(out_dir / f"{name}.png")
    if save_nifti:
        written.append(save_cam_nifti(out_dir / f"{name}.nii.gz", explained.map_volume(), scan_path,
                                      spacing=explained.volume.spacing))
    return written


def scan_stem(scan_path: str | os.PathLike) -> str:
    """A scan's file name without ``.nii``/``.nii.gz`` (a DICOM folder or manifest: its name)."""
    name = Path(scan_path).name
    return name[:-7] if name.endswith(".nii.gz") else name[:-4] if name.endswith(".nii") else name


def unique_stems(scans: Sequence[str | os.PathLike]) -> dict[Path, str]:
    """An output stem per scan, distinct for distinct scans (``a/scan.nii``, ``b/scan.nii``).

    A scan whose stem no other scan shares keeps it; otherwise its parent folder's name is
    put in front (``a_scan``), and where that still collides, a short hash of the resolved
    path is added. The same path given twice gets the same stem.
    """
    paths = list(dict.fromkeys(Path(s) for s in scans))
    stems = {p: scan_stem(p) for p in paths}
    for attempt in (lambda p: f"{p.resolve().parent.name}_{scan_stem(p)}",
                    lambda p: f"{p.resolve().parent.name}_{scan_stem(p)}_"
                              f"{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:8]}"):
        counts = Counter(stems.values())
        stems = {p: (attempt(p) if counts[stem] > 1 else stem) for p, stem in stems.items()}
    return stems
