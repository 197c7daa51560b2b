"""The deletion test: replace the blood with brain and see whether P(any) falls."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ichlib.explain.deletion import control_mask, deletion_test, fill_value
from ichlib.io.ctich import read_ct_ich
from ichlib.model import ModelOutput
from ichlib.preprocess.dataset import PreprocessConfig, ScanDataset


class BrightPixelModel(nn.Module):
    """P(any) rises with the number of pixels brighter than 60 HU in the brain window: it
    uses exactly the blood of the test folders (70 HU squares on 30 HU brain)."""

    def forward_scan(self, slices: torch.Tensor, samplings: np.ndarray) -> ModelOutput:
        bright = (slices[:, 0] > 0.85).float().flatten(1).sum(dim=1)  # [N]; 60 HU is 0.75 in 40/80
        slice_logits = (bright[:, None] - 4.0).repeat(1, 6)
        return ModelOutput(scan_logits=slice_logits.amax(dim=0, keepdim=True), slice_logits=slice_logits[None])


class CornerModel(nn.Module):
    """Looks only at the top-left corner pixel, never at the blood."""

    def forward_scan(self, slices: torch.Tensor, samplings: np.ndarray) -> ModelOutput:
        corner = slices[:, 0, 0, 0]
        logits = corner[:, None].repeat(1, 6)
        return ModelOutput(scan_logits=logits.amax(dim=0, keepdim=True), slice_logits=logits[None])


def volumes(data, ids, size):
    ds = ScanDataset(data, ids, PreprocessConfig(img_size=size))
    return {pid: np.asarray(ds.resized_volume(pid)) for pid in ids}


def test_a_model_that_uses_the_blood_drops_and_the_control_does_not(small_ct_ich):
    data = read_ct_ich(small_ct_ich)
    config = PreprocessConfig(img_size=32, seq_len=4)
    vols = volumes(data, data.patient_ids, 32)
    result = deletion_test(BrightPixelModel(), data, data.patient_ids, config, vols)
    assert sorted(result.scans["patient_id"]) == ["050", "051"]  # the patients with blood
    assert (result.scans["drop"] > 0.9).all()
    assert (result.scans["control_drop"].abs() < 0.05).all()
    assert len(result.slices) == 2 + 4 and (result.slices["drop"] > 0.9).all()
    summary = result.summary(n_boot=50).set_index(["level", "replaced"])
    assert summary.loc[("scan P(any)", "blood deleted"), "mean_drop"] > 0.9
    assert summary.loc[("scan P(any)", "control area"), "ci_high"] < 0.05

    blind = deletion_test(CornerModel(), data, data.patient_ids, config, vols)
    assert np.allclose(blind.scans["drop"], 0) and np.allclose(blind.scans["control_drop"], 0)


def test_control_area_has_the_mask_size_inside_the_brain_and_off_the_blood():
    brain = np.zeros((32, 32), bool)
    brain[4:28, 4:28] = True
    mask = np.zeros_like(brain)
    mask[10:14, 10:15] = True
    moved = control_mask(mask, brain & ~mask, np.random.default_rng(0))
    assert moved.sum() == mask.sum() and not (moved & mask).any() and (moved <= brain).all()
    hu = np.where(brain, 35.0, -1000.0).astype(np.float32)
    hu[mask] = 75.0
    assert fill_value(hu, mask) == 35.0
