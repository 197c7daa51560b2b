"""Enhanced (multi-frame) CT: frames placed by their functional groups, into the same Volume
as a classic one-slice-per-file series.

pydicom ships no Enhanced CT test file (its bundled files were checked offline: the
multi-frame ones are a Segmentation, RT Dose, ultrasound and secondary captures). So:

- the functional-group lookup is tested on pydicom's own ``liver_1frame.dcm``, a
  Segmentation whose per-frame Plane Position and shared Plane Orientation / Pixel Measures
  groups were written by another tool;
- the frame and pixel logic is tested on an Enhanced CT Image Storage file built from the
  pixels and geometry of pydicom's ``CT_small.dcm``, against the same frames written as a
  classic series;
- pydicom's ``MR_small.dcm`` and ``liver_1frame.dcm`` are refused as not CT, saying so.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from ichlib.errors import DataError
from ichlib.io.dicom.enhanced import frame_geometry, frame_headers
from ichlib.io.dicom.headers import SliceHeader, read_header_dataset
from ichlib.io.dicom.series import load_dicom_series, read_dicom_series_header
from ichlib.io.load import load_volume

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
STEP = 5.0
INTERCEPTS = (-1024.0, -1000.0, -1024.0, -990.0)


def _item(**groups: Dataset) -> Dataset:
    item = Dataset()
    for keyword, content in groups.items():
        setattr(item, keyword, Sequence([content]))
    return item


def _ds(**values) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def frames_of_ct_small() -> tuple[Dataset, np.ndarray, np.ndarray]:
    """pydicom's CT_small, and four frames from it: stored values and their HU."""
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    stored = source.pixel_array.astype(np.int16)
    frames = np.stack([np.roll(stored, 7 * k, axis=1) for k in range(4)])
    return source, frames, frames.astype(np.float32) + np.asarray(INTERCEPTS, np.float32)[:, None, None]


def write_enhanced(path: Path, order=(2, 0, 3, 1)) -> Path:
    """An Enhanced CT file whose frames are stored in ``order`` (frame i holds slice order[i])."""
    source, frames, _ = frames_of_ct_small()
    ds = copy.deepcopy(source)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                    "RescaleIntercept", "RescaleSlope", "PixelPaddingValue"):
        delattr(ds, keyword) if keyword in ds else None
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.NumberOfFrames = len(order)
    z0 = float(source.ImagePositionPatient[2])
    ds.SharedFunctionalGroupsSequence = Sequence([_item(
        PlaneOrientationSequence=_ds(ImageOrientationPatient=list(source.ImageOrientationPatient)),
        PixelMeasuresSequence=_ds(PixelSpacing=list(source.PixelSpacing), SliceThickness=STEP))])
    ds.PerFrameFunctionalGroupsSequence = Sequence([_item(
        PlanePositionSequence=_ds(ImagePositionPatient=[*source.ImagePositionPatient[:2], z0 + STEP * k]),
        PixelValueTransformationSequence=_ds(RescaleIntercept=INTERCEPTS[k], RescaleSlope=1.0,
                                             RescaleType="HU")) for k in order])
    ds.PixelData = np.ascontiguousarray(frames[list(order)]).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_classic(folder: Path) -> Path:
    """The same four slices as single-frame CT Image Storage files."""
    source, frames, _ = frames_of_ct_small()
    folder.mkdir(parents=True)
    z0 = float(source.ImagePositionPatient[2])
    for k, frame in enumerate(frames):
        ds = copy.deepcopy(source)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [*source.ImagePositionPatient[:2], z0 + STEP * k]
        ds.RescaleIntercept = INTERCEPTS[k]
        del ds.PixelPaddingValue
        ds.PixelData = frame.tobytes()
        ds.save_as(folder / f"slice{k}.dcm", enforce_file_format=True)
    return folder


def test_an_enhanced_ct_file_loads_like_the_classic_series(tmp_path):
    enhanced = write_enhanced(tmp_path / "enhanced" / "ct.dcm")
    volume = load_dicom_series(enhanced.parent)
    classic = load_dicom_series(write_classic(tmp_path / "classic"))
    _, _, hu = frames_of_ct_small()
    assert volume.hu.shape == classic.hu.shape == (4, 128, 128)
    np.testing.assert_array_equal(volume.hu, classic.hu)
    np.testing.assert_array_equal(volume.hu, hu)  # each frame with its own intercept
    assert volume.spacing == pytest.approx(classic.spacing)
    assert volume.spacing == pytest.approx((STEP, 0.661468, 0.661468))
    header = read_dicom_series_header(enhanced.parent)
    assert header.shape == (4, 128, 128) and header.spacing == pytest.approx(volume.spacing)
    np.testing.assert_array_equal(load_volume(enhanced.parent).hu, volume.hu)


def test_frames_are_ordered_by_position_not_by_frame_number(tmp_path):
    forward = load_dicom_series(write_enhanced(tmp_path / "a" / "ct.dcm", order=(0, 1, 2, 3)).parent)
    shuffled = load_dicom_series(write_enhanced(tmp_path / "b" / "ct.dcm", order=(3, 1, 0, 2)).parent)
    np.testing.assert_array_equal(forward.hu, shuffled.hu)


def test_frame_headers_carry_each_frames_geometry_and_rescale(tmp_path):
    ds, header = read_header_dataset(write_enhanced(tmp_path / "e" / "ct.dcm", order=(2, 0, 3, 1)))
    assert header.frames == 4 and header.position is None  # nothing at the top level
    frames = frame_headers(ds, header)
    assert [f.frame for f in frames] == [0, 1, 2, 3]
    z = [f.position[2] for f in frames]
    assert np.diff(sorted(z)).tolist() == pytest.approx([STEP] * 3)
    assert [f.rescale_intercept for f in frames] == [INTERCEPTS[k] for k in (2, 0, 3, 1)]
    assert all(f.orientation == (1, 0, 0, 0, 1, 0) and f.pixel_spacing == pytest.approx((0.661468,) * 2)
               for f in frames)
    assert frames[2].name == "ct.dcm (frame 3)"


def test_functional_groups_of_pydicoms_segmentation_file():
    """liver_1frame.dcm: per-frame Plane Position, shared Plane Orientation and Pixel Measures."""
    ds = pydicom.dcmread(get_testdata_file("liver_1frame.dcm"), stop_before_pixels=True)
    shared = ds.SharedFunctionalGroupsSequence[0]
    stub = SliceHeader(path=Path("liver_1frame.dcm"), sop_uid="", series_uid="1", study_uid="",
                       patient_id="", position=None, orientation=None, rows=512, columns=512,
                       pixel_spacing=None, slice_thickness=None, instance_number=None,
                       transfer_syntax="", bits_allocated=1, bits_stored=1, high_bit=0,
                       pixel_representation=0, samples=1, frames=3, rescale_intercept=0.0,
                       rescale_slope=1.0)
    geometry = [frame_geometry(item, shared, ds, stub) for item in ds.PerFrameFunctionalGroupsSequence]
    assert [g["position"] for g in geometry] == [(-235.2, -226.8, z) for z in (-128.69, -127.69, -126.69)]
    assert all(g["orientation"] == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0) for g in geometry)
    assert all(g["pixel_spacing"] == pytest.approx((0.810547, 0.810547)) for g in geometry)
    assert all(g["slice_thickness"] == 1.0 and g["rescale_slope"] == 1.0 for g in geometry)


@pytest.mark.parametrize("name, modality", [("liver_1frame.dcm", "SEG"), ("MR_small.dcm", "MR")])
def test_pydicoms_non_ct_images_are_refused_as_not_ct(tmp_path, name, modality):
    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(get_testdata_file(name), folder / name)
    with pytest.raises(DataError, match=f"Modality {modality} .* is not CT") as info:
        load_dicom_series(folder)
    assert info.value.path == str(folder / name)
    assert "lack ImagePositionPatient" not in str(info.value)


def test_frames_without_functional_groups_are_refused_saying_why(tmp_path):
    path = write_enhanced(tmp_path / "e" / "ct.dcm")
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DataError, match=r"multi-frame image \(4 frames\) read as one slice"):
        load_dicom_series(path.parent)


def test_functional_groups_that_miss_a_frame_are_refused(tmp_path):
    path = write_enhanced(tmp_path / "e" / "ct.dcm")
    ds = pydicom.dcmread(path)
    ds.PerFrameFunctionalGroupsSequence = Sequence(list(ds.PerFrameFunctionalGroupsSequence)[:3])
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DataError, match=r"3 per-frame functional group item\(s\) for 4 frame\(s\)"):
        load_dicom_series(path.parent)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_a_frame_with_a_nan_intercept_is_refused(tmp_path):
    path = write_enhanced(tmp_path / "e" / "ct.dcm")
    ds = pydicom.dcmread(path)
    ds.PerFrameFunctionalGroupsSequence[1].PixelValueTransformationSequence[0].RescaleIntercept = "NaN"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DataError, match="RescaleIntercept is nan") as info:
        load_dicom_series(path.parent)
    assert info.value.path == str(path)


def test_a_frame_whose_rescale_overflows_is_refused_naming_the_file_and_frame(tmp_path):
    path = write_enhanced(tmp_path / "e" / "ct.dcm")
    ds = pydicom.dcmread(path)
    ds.PerFrameFunctionalGroupsSequence[1].PixelValueTransformationSequence[0].RescaleSlope = 1e38
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DataError, match=r"frame 2 of 4: RescaleSlope 1e\+38 and RescaleIntercept "
                                        r"-?\d+ turn \d+ of \d+ stored value\(s\) into HU that are "
                                        r"not finite \((\+inf|-inf)") as info:
        load_dicom_series(path.parent)
    assert info.value.path == str(path)
    with pytest.raises(DataError, match="frame 2 of 4"):
        load_volume(path.parent)
