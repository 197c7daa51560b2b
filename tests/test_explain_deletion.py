"""The deletion test: replace the blood with brain and see whether P(any) falls."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ichlib.explain.deletion import _predict_edits, control_mask, deletion_test, fill_value
from ichlib.io.ctich import read_ct_ich
from ichlib.model import CNNBiLSTM, ModelOutput
from ichlib.preprocess.dataset import PreprocessConfig, ScanDataset, to_model_input
from ichlib.preprocess.sampling import covering_indices


class BrightPixelModel(nn.Module):
    """P(any) rises with the number of pixels brighter than 60 HU in the brain window: it
    uses exactly the blood of the test folders (70 HU squares on 30 HU brain). Its
    "embedding" of a slice is that count."""

    def embed(self, slices: torch.Tensor) -> torch.Tensor:
        return (slices[:, 0] > 0.85).float().flatten(1).sum(dim=1, keepdim=True)  # 60 HU is 0.75 in 40/80

    def heads_from_embeddings(self, embeddings: torch.Tensor, samplings: np.ndarray) -> ModelOutput:
        slice_logits = (embeddings - 4.0).repeat(1, 6)
        return ModelOutput(scan_logits=slice_logits.amax(dim=0, keepdim=True), slice_logits=slice_logits[None])


class CornerModel(BrightPixelModel):
    """Looks only at the top-left corner pixel, never at the blood."""

    def embed(self, slices: torch.Tensor) -> torch.Tensor:
        return slices[:, 0, 0, 0][:, None] + 4.0


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


def test_edited_scans_reuse_the_unchanged_slices_and_predict_as_a_whole_scan_would():
    torch.manual_seed(0)
    config = PreprocessConfig(windows=("brain", "subdural", "bone"), img_size=32, seq_len=4)
    model = CNNBiLSTM(backbone="resnet18", in_channels=len(config.windows), lstm_hidden=16).eval()
    rng = np.random.default_rng(0)
    hu = rng.normal(30, 20, (9, 32, 32)).astype(np.float32)
    changed = np.array([2, 3, 7])
    edits = []
    for value in (80.0, -50.0):
        edited = hu.copy()
        edited[changed, 8:20, 8:20] = value
        edits.append(edited)
    scan_p, slice_p = _predict_edits(model, hu, edits, changed, config, "cpu")
    for volume, p_scan, p_slice in zip([hu, *edits], scan_p, slice_p, strict=True):
        with torch.inference_mode():
            out = model.forward_scan(to_model_input(volume, config.windows), covering_indices(9, 4))
        assert abs(p_scan - float(torch.sigmoid(out.scan_logits[0, 0]))) < 1e-5
        assert np.allclose(p_slice, torch.sigmoid(out.slice_logits[0, :, 0]).numpy(), atol=1e-5)
    assert abs(scan_p[1] - scan_p[0]) > 1e-4 or not np.allclose(slice_p[1], slice_p[0])  # the edits count
