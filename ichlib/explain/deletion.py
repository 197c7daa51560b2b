"""Does the model use the blood? Delete it and see.

A saliency map can be at chance while the model relies on the blood, and can look right while
the model uses something else. The deletion test asks the model directly: replace every
voxel of the hemorrhage mask with normal brain, predict the whole scan again, and measure
how far ``P(any)`` falls. As a control, the same number of voxels, the mask moved to a part
of the brain without blood, is replaced in the same way: a model that reacts to any change of
the image drops there too; one that uses the blood drops only when the blood goes.

Everything happens on the model's input grid (the cached volumes resized to ``img_size``):
the filled value is the median HU of the slice's intracranial voxels outside the mask in the
brain band (0-60 HU), so the slice stays a plausible head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ichlib.io.ctich import CtIchData
from ichlib.model import CNNBiLSTM
from ichlib.preprocess.dataset import PreprocessConfig, sampled_mask, to_model_input
from ichlib.preprocess.hu import intracranial_mask
from ichlib.preprocess.sampling import covering_indices
from ichlib.training.metrics import bootstrap_mean

#: HU band of the brain voxels whose median fills a deleted region.
BRAIN_FILL_HU = (0.0, 60.0)


@dataclass
class DeletionResult:
    """What :func:`deletion_test` measured.

    Attributes:
        scans: One row per patient: ``p`` (``P(any)`` of the scan as it is), ``p_deleted``
            (blood replaced), ``p_control`` (the same area replaced elsewhere in the
            brain), ``drop`` and ``control_drop`` (``p`` minus each), ``n_slices`` (slices
            with blood) and ``blood_px`` (deleted pixels).
        slices: One row per slice with blood: the slice head's ``P(any)`` as it is,
            deleted and controlled, and the two drops.
    """

    scans: pd.DataFrame
    slices: pd.DataFrame

    def summary(self, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
        """Mean drop and control drop at scan and slice level, with 95% bootstrap intervals
        over patients."""
        rows = []
        for level, table in (("scan P(any)", self.scans), ("slice head P(any)", self.slices)):
            groups = list(table["patient_id"]) if len(table) else []
            for what, column in (("blood deleted", "drop"), ("control area", "control_drop")):
                values = table[column].to_numpy(dtype=float)
                boot = bootstrap_mean(values, groups, n_boot=n_boot, seed=seed) if len(values) else np.array([])
                low, high = np.percentile(boot, [2.5, 97.5]) if boot.size else (np.nan, np.nan)
                rows.append({"level": level, "replaced": what, "n": len(values),
                             "n_patients": len(set(groups)), "mean_drop": float(values.mean()) if len(values) else np.nan,
                             "ci_low": float(low), "ci_high": float(high)})
        return pd.DataFrame(rows)


def fill_value(hu_slice: np.ndarray, exclude: np.ndarray) -> float:
    """Median HU of the slice's intracranial brain voxels (0-60 HU) outside ``exclude``."""
    brain = intracranial_mask(hu_slice[None])[0] & ~exclude
    band = brain & (hu_slice >= BRAIN_FILL_HU[0]) & (hu_slice <= BRAIN_FILL_HU[1])
    return float(np.median(hu_slice[band])) if band.any() else 30.0


def control_mask(mask: np.ndarray, brain: np.ndarray, rng: np.random.Generator, tries: int = 200) -> np.ndarray:
    """``mask`` moved by a random shift to where it lies wholly inside ``brain`` and away from
    ``mask`` itself; the shift that keeps most of it inside the brain if none fits."""
    if not mask.any():
        return mask.copy()
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    best, best_inside = mask & False, -1.0
    for _ in range(tries):
        dy = int(rng.integers(-ys.min(), h - ys.max()))
        dx = int(rng.integers(-xs.min(), w - xs.max()))
        moved = np.zeros_like(mask)
        moved[ys + dy, xs + dx] = True
        if (moved & mask).any():
            continue
        inside = float((moved & brain).sum()) / len(ys)
        if inside == 1.0:
            return moved
        if inside > best_inside:
            best, best_inside = moved, inside
    return best & brain


def deletion_test(model: CNNBiLSTM, data: CtIchData, patient_ids: Sequence[str], config: PreprocessConfig,
                  volumes: dict[str, np.ndarray], seed: int = 0, device: str | torch.device = "cpu") -> DeletionResult:
    """Delete the blood of each patient with blood and predict again (see the module docstring).

    Args:
        model: The trained model (put in eval mode).
        data: The dataset (labels and masks).
        patient_ids: Patients to test; those without blood are left out.
        config: The model's preprocessing (windows, ``img_size``, ``S``).
        volumes: ``{patient_id: [N, H, W]}`` HU volumes at ``img_size`` (e.g.
            :meth:`~ichlib.preprocess.dataset.ScanDataset.resized_volume`).
        seed: Seed of the control areas.
        device: Where the model runs.

    Returns:
        :class:`DeletionResult`.
    """
    model.eval()
    rng = np.random.default_rng(seed)
    scans, slices = [], []
    for pid in patient_ids:
        labels = data.slice_labels(pid)
        if labels[:, 0].max() < 0.5:
            continue
        hu = np.asarray(volumes[pid], dtype=np.float32)
        masks = sampled_mask(data, pid, np.arange(len(hu)), config.img_size)
        deleted, control = hu.copy(), hu.copy()
        for k in np.nonzero(masks.any(axis=(1, 2)))[0]:
            brain = intracranial_mask(hu[k][None])[0]
            moved = control_mask(masks[k], brain & ~masks[k], rng)
            deleted[k][masks[k]] = fill_value(hu[k], masks[k])
            control[k][moved] = fill_value(hu[k], masks[k] | moved)
        with_blood = np.nonzero(masks.any(axis=(1, 2)))[0]
        scan_p, slice_p = _predict_edits(model, hu, (deleted, control), with_blood, config, device)
        scans.append({"patient_id": pid, "p": scan_p[0], "p_deleted": scan_p[1], "p_control": scan_p[2],
                      "drop": scan_p[0] - scan_p[1], "control_drop": scan_p[0] - scan_p[2],
                      "n_slices": len(with_blood), "blood_px": int(masks.sum())})
        for k in with_blood:
            slices.append({"patient_id": pid, "slice": int(k), "p": slice_p[0][k], "p_deleted": slice_p[1][k],
                           "p_control": slice_p[2][k], "drop": slice_p[0][k] - slice_p[1][k],
                           "control_drop": slice_p[0][k] - slice_p[2][k]})
    columns = ["patient_id", "p", "p_deleted", "p_control", "drop", "control_drop"]
    return DeletionResult(scans=pd.DataFrame(scans, columns=[*columns, "n_slices", "blood_px"]),
                          slices=pd.DataFrame(slices, columns=[*columns[:1], "slice", *columns[1:]]))


def _predict_edits(model: CNNBiLSTM, hu: np.ndarray, edits: Sequence[np.ndarray], changed: np.ndarray,
                   config: PreprocessConfig, device: str | torch.device) -> tuple[list[float], list[np.ndarray]]:
    """``P(any)`` of the whole scan (every slice, as prediction does) and per slice, for ``hu``
    and for each edited copy of it that differs only on the slices ``changed``.

    The CNN sees each slice on its own (eval mode), so an edited scan's embeddings are the
    original's with the changed slices embedded again: the CNN runs over
    ``N + len(edits) * len(changed)`` slices instead of ``(1 + len(edits)) * N``.
    """
    samplings = covering_indices(len(hu), config.seq_len)
    scan_p, slice_p = [], []
    with torch.inference_mode():
        base = model.embed(to_model_input(hu, config.windows).to(device)).float()
        for volume in (None, *edits):
            embeddings = base
            if volume is not None and len(changed):
                embeddings = base.clone()
                embeddings[torch.as_tensor(changed)] = model.embed(
                    to_model_input(volume[changed], config.windows).to(device)).float()
            out = model.heads_from_embeddings(embeddings, samplings)
            scan_p.append(float(torch.sigmoid(out.scan_logits[0, 0])))
            slice_p.append(torch.sigmoid(out.slice_logits[0, :, 0]).cpu().numpy().astype(float))
    return scan_p, slice_p
