"""A scan's Grad-CAM report: maps back in the scan's geometry, placed at the sampled slices,
exported aligned with the scan, and the report's files (PNG + NIfTI)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from ichlib.errors import ConfigError
from ichlib.explain.cam import CamSpec
from ichlib.explain.report import (
    explain_scan,
    maps_to_volume,
    save_cam_nifti,
    unique_stems,
    write_cam_report,
)
from ichlib.io.load import load_volume
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


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_write_cam_report_png_and_aligned_nifti(make_ct_ich, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ichlib.viz.cam import save_cam_montage

    root = make_ct_ich({60: np.eye(7, 5, -2, dtype=int)}, size=48)
    scan = root / "ct_scans" / "060.nii"
    torch.manual_seed(0)
    model = CNNBiLSTM("resnet18", in_channels=2, lstm_hidden=8).train()
    config = PreprocessConfig(windows=("brain", "subdural"), img_size=64, seq_len=4)
    open_before = plt.get_fignums()

    paths = write_cam_report(model, config, scan, tmp_path / "out", top_k=3, figure=save_cam_montage)

    assert model.training                                     # state restored
    assert plt.get_fignums() == open_before                   # no figure left open
    png, nifti = paths
    assert png.name.startswith("060_cam_") and png.suffix == ".png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert nifti.name == png.name[:-4] + ".nii.gz"
    source, written = nib.load(scan), nib.load(nifti)
    np.testing.assert_allclose(written.affine, source.affine)
    assert written.shape == source.shape
    maps = np.transpose(np.asarray(written.dataobj, dtype=np.float32), (2, 1, 0))
    assert maps.shape == load_volume(scan).hu.shape == (7, 48, 48)
    assert maps.min() >= 0 and maps.max() == pytest.approx(1.0, abs=1e-3)
    assert all(maps[k].any() for k in range(7))               # every slice is explained

    only_png = write_cam_report(model, config, scan, tmp_path / "png", save_nifti=False,
                                label="epidural", figure=save_cam_montage)
    assert [p.name for p in only_png] == ["060_cam_epidural.png"]


def test_write_cam_report_without_a_figure_writes_the_nifti_only(small_ct_ich, tmp_path):
    model = CNNBiLSTM(lstm_hidden=8).eval()
    config = PreprocessConfig(windows=("brain",), img_size=32, seq_len=4)
    scan = small_ct_ich / "ct_scans" / "050.nii"
    drawn = []
    paths = write_cam_report(model, config, scan, tmp_path, label="any", stem="a.b")
    assert [p.name for p in paths] == ["a.b_cam_any.nii.gz"]  # a dot in the stem stays
    paths = write_cam_report(model, config, scan, tmp_path, label="any", save_nifti=False, synthetic=True,
                             figure=lambda explained, path, *, title, top_k: drawn.append((path, title, top_k)))
    assert paths == [tmp_path / "050_cam_any.png"] and drawn[0][0] == paths[0] and drawn[0][2] == 6
    first, second, third = drawn[0][1].splitlines()
    assert first.startswith("SYNTHETIC: model trained on the synthetic phantom")
    assert second.startswith("050.nii: Grad-CAM for 'any' (p = ") and third.startswith("any ")
    with pytest.raises(ConfigError, match="nothing to write"):
        write_cam_report(model, config, scan, tmp_path, save_nifti=False)


def test_unique_stems_keep_scans_of_one_name_apart(tmp_path):
    paths = [tmp_path / "a" / "scan.nii", tmp_path / "b" / "scan.nii.gz", tmp_path / "c" / "other.nii"]
    stems = unique_stems([*paths, paths[0]])
    assert stems == {paths[0]: "a_scan", paths[1]: "b_scan", paths[2]: "other"}
