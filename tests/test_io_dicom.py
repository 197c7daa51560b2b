"""DICOM series -> Volume: order, spacing, HU, the RSNA 12-bit bug, padding, and every refusal."""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless

import ichlib.io.dicom.headers
import ichlib.io.dicom.pixels
import ichlib.io.dicom.pixels as dicom_pixels
from ichlib.errors import DataError
from ichlib.io.dicom.headers import decoder_available, read_slice_header
from ichlib.io.dicom.pixels import AIR_HU, dataset_to_hu, has_12bit_bug
from ichlib.io.dicom.series import (
    IgnoredFilesWarning,
    load_dicom_series,
    read_dicom_series_header,
    read_series_manifest,
    write_series_manifest,
)
from ichlib.synthetic.rsna import ct_dataset, write_dataset

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut
except ImportError:  # pydicom 2.4
    from pydicom.pixel_data_handlers.util import apply_modality_lut


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    try:
        from pydicom.pixels import pixel_array
    except ImportError:
        return ds.pixel_array
    return pixel_array(ds)


def _slice(k: int, rows: int = 6, cols: int = 8) -> np.ndarray:
    """Stored values (intercept -1024) of slice k: HU 10*k at [0, 0], a ramp elsewhere."""
    hu = np.arange(rows * cols, dtype=np.int16).reshape(rows, cols) - 500
    hu[0, 0] = 10 * k
    return (hu + 1024).astype(np.int16)


def write_series(folder: Path, positions, orientation=(1, 0, 0, 0, 1, 0), series_uid="1.2.826.0.1.3",
                 names=None, instance_numbers=None, rows: int = 6, cols: int = 8,
                 pixel_spacing=(0.5, 0.7), sizes=None) -> list[Path]:
    """Write one file per position; slice k (k = index in ``positions``) has HU 10*k at [0, 0]."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, pos in enumerate(positions):
        r, c = sizes[k] if sizes else (rows, cols)
        ds = ct_dataset(_slice(k, r, c), sop_uid=f"{series_uid}.{k + 1}", series_uid=series_uid,
                        study_uid="1.2.826.0.1.2", patient_id="P1", position=pos,
                        orientation=orientation, pixel_spacing=pixel_spacing, slice_thickness=2.5,
                        instance_number=instance_numbers[k] if instance_numbers else k + 1)
        name = names[k] if names else f"img{k:03d}.dcm"
        paths.append(write_dataset(folder / name, ds))
    return paths


def axial(n: int, step: float = 2.5, z0: float = -40.0) -> list[tuple[float, float, float]]:
    return [(-10.0, -12.0, z0 + k * step) for k in range(n)]


# --- order, spacing, axes -----------------------------------------------------------------

def test_slices_sorted_by_position_not_by_name_or_instance_number(tmp_path):
    pos = axial(6)
    perm = [3, 0, 5, 1, 4, 2]
    write_series(tmp_path / "s", [pos[k] for k in perm],
                 names=[f"z{9 - i}.dcm" for i in range(6)], instance_numbers=[6, 5, 4, 3, 2, 1])
    vol = load_dicom_series(tmp_path / "s")
    # slice k of the file list carries HU 10*k; sorted by z the order must be perm's inverse
    assert vol.hu[:, 0, 0].tolist() == [10.0 * perm.index(k) for k in range(6)]
    assert vol.hu.dtype == np.float32 and vol.hu.shape == (6, 6, 8)
    assert vol.spacing == pytest.approx((2.5, 0.5, 0.7))
    assert vol.path == tmp_path / "s"
    # rows are DICOM rows, columns DICOM columns: the ramp runs along columns first
    assert vol.hu[0, 1, 0] - vol.hu[0, 0, 1] == pytest.approx(8 - 1)


def test_gantry_tilt_orders_along_the_normal_not_z(tmp_path):
    t = math.radians(25)
    row, col = np.array([1.0, 0, 0]), np.array([0.0, math.cos(t), -math.sin(t)])
    normal = np.cross(row, col)
    # planes 3 mm apart along the normal, but shifted in-plane so that z is not monotonic
    shifts = [0.0, 12.0, -9.0, 20.0, 3.0]
    pos = [tuple(k * 3.0 * normal + s * col) for k, s in enumerate(shifts)]
    z = [p[2] for p in pos]
    assert sorted(range(5), key=z.__getitem__) != list(range(5))  # z alone would mis-order
    write_series(tmp_path / "tilt", pos[::-1], orientation=(*row, *col))
    vol = load_dicom_series(tmp_path / "tilt")
    assert vol.hu[:, 0, 0].tolist() == [40.0, 30.0, 20.0, 10.0, 0.0]
    assert vol.spacing[0] == pytest.approx(3.0)


def test_header_only_reader_matches_load_and_decodes_nothing(tmp_path, monkeypatch):
    write_series(tmp_path / "s", axial(4, step=5.0))
    vol = load_dicom_series(tmp_path / "s")

    def fail(ds):
        raise AssertionError("the header reader decoded pixels")

    monkeypatch.setattr(ichlib.io.dicom.pixels, "_decode_pixels", fail)
    header = read_dicom_series_header(tmp_path / "s")
    assert header.shape == vol.hu.shape == (4, 6, 8)
    assert header.spacing == pytest.approx(vol.spacing)
    assert header.dtype == np.dtype("int16")


def test_list_of_files_and_manifest_sources(tmp_path):
    paths = write_series(tmp_path / "s", axial(3))
    assert load_dicom_series(paths[::-1]).hu[:, 0, 0].tolist() == [0.0, 10.0, 20.0]
    manifest = write_series_manifest(tmp_path / "m" / "x.series", paths[::-1], "1.2.826.0.1.3")
    assert read_series_manifest(manifest) == [p.absolute() for p in paths[::-1]]
    assert load_dicom_series(manifest).hu[:, 0, 0].tolist() == [0.0, 10.0, 20.0]
    assert read_dicom_series_header(manifest).shape == (3, 6, 8)
    # unchanged content: the manifest is not rewritten (caches keyed on its mtime stay valid)
    before = manifest.stat().st_mtime_ns
    os.utime(manifest, ns=(before - 10**9, before - 10**9))
    write_series_manifest(manifest, paths[::-1], "1.2.826.0.1.3")
    assert manifest.stat().st_mtime_ns == before - 10**9
    # a listed DICOM file changed: the fingerprint changes, the manifest is rewritten
    os.utime(paths[0], ns=(1, 1))
    write_series_manifest(manifest, paths[::-1], "1.2.826.0.1.3")
    assert manifest.stat().st_mtime_ns != before - 10**9
    paths[1].unlink()
    with pytest.raises(DataError, match="listed file"):
        load_dicom_series(manifest)


# --- HU: real files shipped with pydicom ----------------------------------------------------

def test_ct_small_hu_equals_pydicoms_modality_lut(tmp_path):
    src = get_testdata_file("CT_small.dcm")
    if src is None:
        pytest.skip("pydicom could not provide CT_small.dcm (it ships in the wheel; no network)")
    shutil.copy(src, tmp_path / "ct.dcm")
    ds = pydicom.dcmread(src)
    assert float(ds.RescaleIntercept) == -1024
    reference = apply_modality_lut(_pixels(ds), ds)
    vol = load_dicom_series(tmp_path)
    expected = np.where(reference < dicom_pixels.OUTSIDE_FOV_HU, AIR_HU, reference)
    np.testing.assert_array_equal(vol.hu[0], expected.astype(np.float32))
    assert vol.hu.shape == (1, 128, 128)
    assert vol.spacing == pytest.approx((5.0, 0.661468, 0.661468))  # one slice: SliceThickness


def test_j2k_pixel_representation_mismatch_and_tilt(tmp_path, monkeypatch):
    src = get_testdata_file("J2K_pixelrep_mismatch.dcm")
    if src is None:
        pytest.skip("pydicom could not provide J2K_pixelrep_mismatch.dcm (ships in the wheel)")
    ds = pydicom.dcmread(src)
    ts = ds.file_meta.TransferSyntaxUID
    header = read_slice_header(src)
    assert header.transfer_syntax == ts and header.pixel_representation == 1
    normal = np.cross(header.orientation[:3], header.orientation[3:])
    assert math.degrees(math.acos(abs(normal[2]))) > 10  # a gantry-tilted slice
    if decoder_available(ts):
        reference = apply_modality_lut(_pixels(ds), ds)
        assert reference.min() < dicom_pixels.OUTSIDE_FOV_HU  # -2000 outside the field of view
        hu = load_dicom_series([src]).hu[0]
        inside = reference >= dicom_pixels.OUTSIDE_FOV_HU
        np.testing.assert_array_equal(hu[inside], reference[inside].astype(np.float32))
        assert (hu[~inside] == AIR_HU).all()
    else:
        with pytest.raises(DataError, match="no installed decoder"):
            load_dicom_series([src])
    # and whatever is installed, a missing decoder is a clear error naming the file
    monkeypatch.setattr(ichlib.io.dicom.headers, "decoder_available", lambda uid: False)
    with pytest.raises(DataError, match=r"J2K_pixelrep_mismatch.dcm: pixel data is compressed "
                                        r"\(JPEG 2000.*no installed decoder"):
        load_dicom_series([src])
    with pytest.raises(DataError, match="no installed decoder"):
        read_dicom_series_header([src])


def test_compressed_without_decoder_is_a_clear_error(tmp_path):
    if decoder_available(JPEGLSLossless):
        pytest.skip("a JPEG-LS decoder is installed, so this file would be decodable")
    ds = ct_dataset(_slice(0), sop_uid="1.2.3.4", series_uid="1.2.3", study_uid="1.2",
                    patient_id="P", position=(0, 0, 0))
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7not really jpeg-ls"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    write_dataset(tmp_path / "jls.dcm", ds)
    for reader in (load_dicom_series, read_dicom_series_header):
        with pytest.raises(DataError, match=r"jls.dcm: pixel data is compressed \(JPEG-LS"):
            reader(tmp_path)


# --- HU: the RSNA 12-bit bug, padding, field of view ----------------------------------------

def _buggy(hu_values: list[int], high_bits: bool) -> pydicom.Dataset:
    """A 12-bit 'unsigned' image with intercept 0 whose values are 12-bit two's complement."""
    arr = np.array(hu_values, dtype=np.int64).reshape(1, -1)
    stored = (arr & 0xFFFF) if high_bits else (arr & 0xFFF)  # sign-extended or bare 12 bits
    return ct_dataset(stored.astype(np.uint16), sop_uid="1.2.3.4", series_uid="1.2.3",
                      study_uid="1.2", patient_id="P", position=(0, 0, 0), intercept=0.0,
                      bits_stored=12, pixel_representation=0)


@pytest.mark.parametrize("high_bits", [False, True])
def test_12bit_bug_is_read_as_signed_without_touching_the_dataset(high_bits):
    hu = [-1000, -2000, -1, 0, 40, 75, 1500, 2047, -2048]
    ds = _buggy(hu, high_bits)
    assert has_12bit_bug(ds)
    before = copy.deepcopy(ds)
    out = dataset_to_hu(ds)
    # air stays air, the -2000/-2048 outside-the-FOV values become air, tissue is exact
    assert out[0].tolist() == [-1000, AIR_HU, -1, 0, 40, 75, 1500, 2047, AIR_HU]
    assert ds == before and ds.PixelData == before.PixelData
    assert (ds.RescaleIntercept, ds.PixelRepresentation, ds.BitsStored) == (0, 0, 12)
    # the common "add 1000, wrap at 4096" fix would have turned -2000 into +2096 HU bone
    raw = np.array(hu) & 0xFFF
    naive = np.where(raw + 1000 >= 4096, raw + 1000 - 4096, raw + 1000) - 1000
    assert naive[1] == 2096 and out[0, 1] == AIR_HU


def test_12bit_unsigned_with_a_proper_intercept_is_not_the_bug():
    stored = np.array([[0, 1024, 3096, 4095]], dtype=np.uint16)
    ds = ct_dataset(stored, sop_uid="1.2.3.4", series_uid="1.2.3", study_uid="1.2",
                    patient_id="P", position=(0, 0, 0), intercept=-1024.0, bits_stored=12,
                    pixel_representation=0)
    assert not has_12bit_bug(ds)
    assert dataset_to_hu(ds)[0].tolist() == [-1024, 0, 2072, 3071]


def test_padding_value_and_outside_fov_become_air():
    stored = np.array([[-2000, -1000, 30, 1000]], dtype=np.int16)
    ds = ct_dataset(stored, sop_uid="1.2.3.4", series_uid="1.2.3", study_uid="1.2",
                    patient_id="P", position=(0, 0, 0), intercept=0.0, padding_value=-1000)
    assert dataset_to_hu(ds)[0].tolist() == [AIR_HU, AIR_HU, 30, 1000]
    # a padding range: [-1100, -900] stored is padding (-1000 HU here would be air anyway)
    ds2 = ct_dataset(np.array([[-1100, -950, -899, 40]], dtype=np.int16), sop_uid="1.2.3.5",
                     series_uid="1.2.3", study_uid="1.2", patient_id="P", position=(0, 0, 0),
                     intercept=100.0, padding_value=-1100)
    ds2.add_new(0x00280121, "SS", -900)
    assert dataset_to_hu(ds2)[0].tolist() == [AIR_HU, AIR_HU, -799, 140]
    # no padding tag: -2000 stored with intercept -1024 is -3024 HU, outside the FOV
    ds3 = ct_dataset(np.array([[-2000, 0, 1064]], dtype=np.int16), sop_uid="1.2.3.6",
                     series_uid="1.2.3", study_uid="1.2", patient_id="P", position=(0, 0, 0))
    assert dataset_to_hu(ds3)[0].tolist() == [AIR_HU, -1024, 40]


# --- refusals -----------------------------------------------------------------------------------

def test_mixed_series_named_unless_one_is_chosen(tmp_path):
    write_series(tmp_path / "mix", axial(3), series_uid="1.2.826.0.1.3")
    write_series(tmp_path / "mix", axial(2), series_uid="1.2.826.0.1.4",
                 names=["other0.dcm", "other1.dcm"])
    with pytest.raises(DataError, match=r"mix: 2 series found: 1\.2\.826\.0\.1\.3 \(3 file\(s\).*"
                                        r"1\.2\.826\.0\.1\.4 \(2 file\(s\).*series_uid="):
        load_dicom_series(tmp_path / "mix")
    assert load_dicom_series(tmp_path / "mix", series_uid="1.2.826.0.1.4").hu.shape[0] == 2
    with pytest.raises(DataError, match="no image of series 9.9"):
        read_dicom_series_header(tmp_path / "mix", series_uid="9.9")


def test_duplicate_positions_refused(tmp_path):
    pos = axial(4)
    pos[2] = pos[1]
    write_series(tmp_path / "d", pos)
    with pytest.raises(DataError, match=r"1 duplicate slice position.*img001.dcm and img002.dcm"):
        load_dicom_series(tmp_path / "d")


def test_gap_wider_than_1_5_spacings_reported(tmp_path):
    pos = axial(6)
    del pos[3]  # one missing slice: a 5 mm gap among 2.5 mm steps
    write_series(tmp_path / "g", pos)
    with pytest.raises(DataError, match=r"1 gap\(s\) wider than 1.5 x the median spacing 2.50 mm.*"
                                        r"5.00 mm between img002.dcm"):
        read_dicom_series_header(tmp_path / "g")
    with pytest.raises(DataError, match="gap"):
        load_dicom_series(tmp_path / "g")
    assert load_dicom_series(tmp_path / "g", max_gap_ratio=None).hu.shape[0] == 5


def test_slices_of_different_sizes_refused_and_named(tmp_path):
    write_series(tmp_path / "z", axial(3), sizes=[(6, 8), (6, 8), (8, 8)])
    with pytest.raises(DataError, match=r"different sizes.*6x8: 2 file\(s\).*8x8: 1 file\(s\), "
                                        r"e.g. img002.dcm"):
        load_dicom_series(tmp_path / "z")


def test_different_orientations_refused(tmp_path):
    write_series(tmp_path / "o", axial(2))
    write_series(tmp_path / "o", [(0, 0, 10.0)], orientation=(1, 0, 0, 0, 0, -1), names=["loc.dcm"])
    with pytest.raises(DataError, match=r"different orientations.*loc.dcm"):
        load_dicom_series(tmp_path / "o")


def test_missing_geometry_refused(tmp_path):
    paths = write_series(tmp_path / "m", axial(2))
    ds = pydicom.dcmread(paths[1])
    del ds.ImagePositionPatient
    write_dataset(paths[1], ds)
    with pytest.raises(DataError, match="lack ImagePositionPatient"):
        load_dicom_series(tmp_path / "m")


@pytest.mark.parametrize("cut", [100, 4000])
def test_truncated_pixel_data_refused_by_both_readers(tmp_path, cut):
    paths = write_series(tmp_path / "t", axial(3), rows=64, cols=64)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:-cut])
    with pytest.raises(DataError, match=r"img001.dcm: pixel data is truncated"):
        read_dicom_series_header(tmp_path / "t")
    with pytest.raises(DataError, match=r"img001.dcm: pixel data is truncated"):
        load_dicom_series(tmp_path / "t")


def test_file_cut_before_pixel_data_refused(tmp_path):
    paths = write_series(tmp_path / "t", axial(2))
    with open(paths[0], "rb") as fh:
        pydicom.dcmread(fh, stop_before_pixels=True)
        end = fh.tell()
    paths[0].write_bytes(paths[0].read_bytes()[:end])
    with pytest.raises(DataError, match="img000.dcm: no pixel data"):
        read_dicom_series_header(tmp_path / "t")
    with pytest.raises(DataError, match="img000.dcm: no pixel data"):
        load_dicom_series(tmp_path / "t")


def test_non_dicom_files_skipped_with_a_reason_or_refused(tmp_path):
    write_series(tmp_path / "n", axial(3))
    (tmp_path / "n" / "README.txt").write_text("not an image")
    (tmp_path / "n" / "empty.dcm").write_bytes(b"")
    (tmp_path / "n" / ".DS_Store").write_bytes(b"\0\0junk")  # hidden: skipped silently
    (tmp_path / "n" / "sub").mkdir()
    with pytest.warns(IgnoredFilesWarning) as record:
        vol = load_dicom_series(tmp_path / "n")
    assert vol.hu.shape[0] == 3
    message = str(record[0].message)
    assert "skipped 2 file(s)" in message and "README.txt: not a DICOM file" in message
    assert "empty.dcm: empty file" in message and ".DS_Store" not in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_dicom_series(tmp_path / "n", non_dicom="skip").hu.shape[0] == 3
    with pytest.raises(DataError, match=r"2 file\(s\) are not DICOM images - README.txt"):
        read_dicom_series_header(tmp_path / "n", non_dicom="raise")


def test_broken_dicom_is_an_error_not_a_skip(tmp_path):
    write_series(tmp_path / "b", axial(2))
    (tmp_path / "b" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\x10\x00")
    with pytest.raises(DataError, match="broken.dcm: DICOM .*unreadable"):
        load_dicom_series(tmp_path / "b")


def test_empty_or_missing_sources(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="folder holds no file"):
        load_dicom_series(tmp_path / "e")
    (tmp_path / "e" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no DICOM image found"):
        load_dicom_series(tmp_path / "e", non_dicom="skip")
    with pytest.raises(DataError, match="series manifest not found"):
        load_dicom_series(tmp_path / "nothing.series")


def test_constant_volume_refused(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    for k in range(2):
        ds = ct_dataset(np.full((4, 4), 1064, np.int16), sop_uid=f"1.2.3.{k + 1}",
                        series_uid="1.2.3", study_uid="1.2", patient_id="P", position=(0, 0, 5.0 * k))
        write_dataset(folder / f"{k}.dcm", ds)
    with pytest.raises(DataError, match="constant") as dicom:
        load_dicom_series(folder)
    # the NIfTI reader refuses the same volume with the same words (one shared HU check)
    from ichlib.io.nifti import load_nifti, save_volume

    nifti = save_volume(tmp_path / "c.nii", np.full((2, 4, 4), 40.0))
    with pytest.raises(DataError) as same:
        load_nifti(nifti)
    assert dicom.value.problem == same.value.problem == "volume is constant (40 everywhere); it holds no image"


# --- rescaled values that are not finite --------------------------------------------------

@pytest.mark.parametrize(("slope", "kind"), [(1e38, "+inf"), (-1e38, "-inf")])
def test_a_slice_whose_rescale_overflows_is_refused_naming_the_file_and_slice(tmp_path, slope, kind):
    paths = write_series(tmp_path / "s", axial(5))
    ds = pydicom.dcmread(paths[2])
    ds.RescaleSlope = slope  # finite in the header, beyond float32 once multiplied
    ds.save_as(paths[2])
    expected = (f"slice InstanceNumber 3: RescaleSlope {slope:g} and RescaleIntercept -1024 turn "
                f"48 of 48 stored value(s) into HU that are not finite ({kind}; beyond float32)")
    with pytest.raises(DataError, match=re.escape(expected)) as info:
        load_dicom_series(tmp_path / "s")
    assert info.value.path == str(paths[2])
    with pytest.raises(DataError, match=re.escape(expected)):
        dataset_to_hu(pydicom.dcmread(paths[2]))


def test_a_modality_lut_giving_nan_is_refused(tmp_path, monkeypatch):
    ds = pydicom.dcmread(write_series(tmp_path / "s", axial(1))[0])
    ds.ModalityLUTSequence = pydicom.Sequence([pydicom.Dataset()])
    monkeypatch.setattr(dicom_pixels, "_modality_lut", lambda stored, ds: np.full(stored.shape, np.nan))
    with pytest.raises(DataError, match=r"lut.dcm: slice InstanceNumber 1: its ModalityLUTSequence "
                                        r"turn 48 of 48 .*\(NaN;"):
        dataset_to_hu(ds, "lut.dcm")


def test_padding_that_overflows_is_not_a_reason_to_refuse(tmp_path):
    ds = pydicom.dcmread(write_series(tmp_path / "s", axial(1))[0])
    stored = np.zeros((6, 8), dtype=np.int16)
    stored[0, :] = 32767  # padding: 32767 * 1e35 overflows float32, but padding becomes air
    ds.PixelData = stored.tobytes()
    ds.PixelPaddingValue = 32767
    ds.RescaleSlope, ds.RescaleIntercept = 1e35, 0
    hu = dataset_to_hu(ds)
    assert np.isfinite(hu).all() and (hu[0] == AIR_HU).all() and (hu[1:] == 0).all()
