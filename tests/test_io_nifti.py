import gzip

import nibabel as nib
import numpy as np
import pytest

from ichlib.errors import DataError
from ichlib.io.load import load_mask, load_volume, read_header
from ichlib.io.nifti import save_mask, save_volume
from ichlib.io.volume import MAX_VOXELS


def _nifti(path, data, slope=None, inter=None, dtype=None):
    img = nib.Nifti1Image(data, np.diag([0.5, 0.6, 5.0, 1.0]))
    if dtype is not None:
        img.header.set_data_dtype(dtype)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, path)
    return path


def test_slice_k_is_index_k_of_the_last_axis(tmp_path):
    data = np.zeros((6, 4, 3), dtype=np.int16)  # x, y, slices
    for k in range(3):
        data[:, :, k] = 10 * (k + 1)
    data[1, 2, 0] = 99  # x=1, y=2 on slice 0 -> row 2, column 1
    vol = load_volume(_nifti(tmp_path / "a.nii", data))
    assert vol.hu.shape == (3, 4, 6) and vol.hu.dtype == np.float32
    assert vol.hu[1].max() == 20 and vol.hu[2].min() == 30
    assert vol.hu[0, 2, 1] == 99
    np.testing.assert_allclose(vol.spacing, (5.0, 0.6, 0.5), rtol=1e-6)


def test_scaling_is_applied(tmp_path):
    raw = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    vol = load_volume(_nifti(tmp_path / "s.nii", raw, slope=2.0, inter=-1024.0))
    assert vol.hu[0, 0, 0] == -1024.0
    assert vol.hu[3, 2, 1] == raw[1, 2, 3] * 2 - 1024


def test_round_trip_nii_and_gz(tmp_path):
    hu = np.random.default_rng(0).integers(-1000, 1500, size=(5, 8, 7)).astype(np.float32)
    for name in ("r.nii", "r.nii.gz"):
        save_volume(tmp_path / name, hu, spacing=(5.0, 0.4, 0.45))
        vol = load_volume(tmp_path / name)
        np.testing.assert_array_equal(vol.hu, hu)
        np.testing.assert_allclose(vol.spacing, (5.0, 0.4, 0.45), rtol=1e-6)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_mask_round_trip_is_boolean_0_255(tmp_path):
    mask = np.zeros((3, 5, 5), bool)
    mask[1, 2:4, 1] = True
    save_mask(tmp_path / "m.nii", mask)
    raw = np.asarray(nib.load(tmp_path / "m.nii").dataobj)
    assert set(np.unique(raw)) == {0, 255}
    np.testing.assert_array_equal(load_mask(tmp_path / "m.nii"), mask)


def test_header_is_read_without_voxels(tmp_path):
    save_volume(tmp_path / "h.nii", np.zeros((4, 6, 8)) + np.arange(8))
    h = read_header(tmp_path / "h.nii")
    assert h.shape == (4, 6, 8)


def test_trailing_singleton_axis_is_dropped(tmp_path):
    data = np.random.default_rng(0).normal(size=(4, 4, 3, 1)).astype(np.float32)
    assert load_volume(_nifti(tmp_path / "t.nii", data)).hu.shape == (3, 4, 4)


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(b"\x00" * 100), "truncated"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), "not a readable NIfTI"),
    (lambda p: p.mkdir(), "is a directory"),
])
def test_junk_files_are_refused_with_the_path(tmp_path, make, message):
    path = tmp_path / "bad.nii"
    make(path)
    with pytest.raises(DataError, match=message) as info:
        load_volume(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_volume(tmp_path / "none.nii")


def test_gzip_that_is_not_nifti(tmp_path):
    path = tmp_path / "g.nii.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"hello, this is not an image" * 50)
    with pytest.raises(DataError) as info:
        load_volume(path)
    assert str(path) in str(info.value)


def test_truncated_volume_is_refused_before_reading(tmp_path):
    path = _nifti(tmp_path / "t.nii", np.ones((16, 16, 8), np.int16))
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(DataError, match="truncated"):
        load_volume(path)


@pytest.mark.parametrize("shape,word", [((8, 8), "2D"), ((8, 8, 3, 2), "4D")])
def test_wrong_dimensionality(tmp_path, shape, word):
    path = _nifti(tmp_path / "d.nii", np.random.default_rng(0).normal(size=shape).astype(np.float32))
    with pytest.raises(DataError, match=word):
        load_volume(path)


def test_enormous_header_is_refused_before_allocation(tmp_path):
    path = _nifti(tmp_path / "big.nii", np.ones((4, 4, 4), np.int16))
    img = nib.load(path)
    hdr = img.header.copy()
    hdr.set_data_shape((4000, 4000, 4000))
    # rewrite only the header bytes: the file stays tiny, the header claims 64e9 voxels
    raw = bytearray(path.read_bytes())
    raw[:348] = hdr.binaryblock
    path.write_bytes(bytes(raw))
    assert 4000 ** 3 > MAX_VOXELS
    with pytest.raises(DataError, match="implausible shape"):
        load_volume(path)


def test_nan_and_constant_volumes(tmp_path):
    data = np.random.default_rng(0).normal(size=(4, 4, 3)).astype(np.float32)
    data[1, 1, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        load_volume(_nifti(tmp_path / "n.nii", data))
    with pytest.raises(DataError, match="constant"):
        load_volume(_nifti(tmp_path / "c.nii", np.full((4, 4, 3), 7, np.int16)))


def test_wrong_suffix(tmp_path):
    (tmp_path / "x.mgh").write_bytes(b"123")
    with pytest.raises(DataError, match="NIfTI file name"):
        load_volume(tmp_path / "x.mgh")


def test_a_folder_or_series_manifest_loads_as_a_dicom_series(tmp_path):
    from ichlib.io.dicom.series import load_dicom_series, write_series_manifest
    from ichlib.synthetic.rsna import ct_dataset, write_dataset

    files = []
    for k in range(3):
        stored = np.arange(48, dtype=np.int16).reshape(6, 8) + 1024 + 10 * k
        ds = ct_dataset(stored, sop_uid=f"1.2.3.{k + 1}", series_uid="1.2.3", study_uid="1.2",
                        patient_id="P", position=(0.0, 0.0, 2.5 * (2 - k)))
        files.append(write_dataset(tmp_path / "series" / f"{k}.dcm", ds))
    manifest = write_series_manifest(tmp_path / "s.series", files, "1.2.3")
    for source in (tmp_path / "series", manifest):
        vol = load_volume(source)
        np.testing.assert_array_equal(vol.hu, load_dicom_series(source).hu)
        assert vol.hu[:, 0, 0].tolist() == [20.0, 10.0, 0.0]  # sorted by position
        assert read_header(source).shape == (3, 6, 8)
