"""Maps back in the scan's geometry: placed at the sampled slices, exported aligned with the scan."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from ichlib.errors import ConfigError
from ichlib.explain.cam import CamSpec
from ichlib.explain.report import explain_scan, maps_to_volume, save_cam_nifti
from ichlib.io.nifti import save_like, save_volume
from ichlib.model import CNNBiLSTM
from ichlib.preprocess.dataset import PreprocessConfig


def test_maps_to_volume_places_upsamples_and_takes_max_of_repeats():
    maps = np.zeros((3, 4, 4), np.float32)
    maps[0] = 0.5
    maps[1] = 1.0
    maps[2] = 0.25
    volume = maps_to_volume(maps, np.array([0, 2, 2]), (4, 8, 8))
    assert volume.shape == (4, 8, 8) and volume.dtype == np.float32
    np.testing.assert_allclose(volume[0], 0.5)
    np.testing.assert_allclose(volume[2], 1.0)
    assert not volume[1].any() and not volume[3].any()
    with pytest.raises(ConfigError):
        maps_to_volume(maps, np.array([0, 2, 4]), (4, 8, 8))


def _scan_with_different_qform_and_sform(path):
    data = np.zeros((8, 6, 4), dtype=np.int16)
    data[2:4, 1:3, 1] = 60
    qform = np.diag([0.5, 0.5, 5.0, 1.0])
    qform[:3, 3] = [-10.0, 20.0, 30.0]
    sform = qform.copy()
    sform[:3, 3] += [7.0, 0.0, 0.0]      # 7 mm apart, as a scanner export can leave them
    img = nib.Nifti1Image(data, None)
    img.header.set_qform(qform, code=1)
    img.header.set_sform(sform, code=2)
    nib.save(img, path)
    return qform, sform


def test_save_like_copies_qform_and_sform_each_with_its_code(tmp_path):
    scan = tmp_path / "scan.nii"
    qform, sform = _scan_with_different_qform_and_sform(scan)
    maps = np.random.default_rng(0).random((4, 6, 8)).astype(np.float32)  # [slices, H, W]
    out = save_like(tmp_path / "cam.nii.gz", maps, scan, description="test")
    header = nib.load(out).header
    got_q, q_code = header.get_qform(coded=True)
    got_s, s_code = header.get_sform(coded=True)
    np.testing.assert_allclose(got_q, qform, atol=1e-5)
    np.testing.assert_allclose(got_s, sform, atol=1e-5)
    assert (int(q_code), int(s_code)) == (1, 2)
    # voxel for voxel on the scan's grid, in the Volume convention
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj).transpose(2, 1, 0), maps)


def test_save_like_refuses_another_shape(tmp_path):
    scan = save_volume(tmp_path / "scan.nii", np.zeros((3, 4, 5)))
    with pytest.raises(ConfigError, match="does not match"):
        save_like(tmp_path / "cam.nii", np.zeros((3, 4, 4), np.float32), scan)


def test_cam_nifti_for_a_dicom_series_needs_its_spacing(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    maps = np.ones((2, 3, 3), np.float32)
    with pytest.raises(ConfigError, match="spacing"):
        save_cam_nifti(tmp_path / "cam.nii.gz", maps, series)
    out = save_cam_nifti(tmp_path / "cam.nii.gz", maps, series, spacing=(5.0, 0.5, 0.5))
    assert nib.load(out).header.get_zooms()[:3] == (0.5, 0.5, 5.0)


def test_explain_scan_uses_the_chosen_method_and_layer(small_ct_ich):
    torch.manual_seed(0)
    model = CNNBiLSTM(lstm_hidden=8).eval()
    config = PreprocessConfig(windows=("brain",), img_size=64, seq_len=4)
    scan = small_ct_ich / "ct_scans" / "050.nii"
    default = explain_scan(model, config, scan, "any")
    layer3 = explain_scan(model, config, scan, "any", CamSpec("layercam", ("layer3",)))
    assert default.cam.raw.shape == (8, 2, 2) and layer3.cam.raw.shape == (8, 4, 4)  # 1/32 and 1/16 of 64 px
    assert default.map_volume().shape == layer3.map_volume().shape == default.volume.hu.shape
    assert not np.allclose(default.cam.maps, layer3.cam.maps)
