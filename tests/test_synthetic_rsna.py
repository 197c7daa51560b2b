"""The synthetic RSNA folder: layout, realistic tags, and HU that round-trip through the loader."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ichlib.errors import ConfigError, DataError
from ichlib.io.dicom.pixels import AIR_HU, has_12bit_bug
from ichlib.io.dicom.series import load_dicom_series
from ichlib.io.rsna import RSNA_LABEL_ORDER
from ichlib.synthetic.rsna import ENCODINGS, series_phantom, write_synthetic_rsna

# Reading the RSNA-style ``ID_...`` identifiers directly makes pydicom warn on each one.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_synthetic_rsna(tmp_path_factory.mktemp("ph") / "rsna", n_patients=4, size=48,
                                n_slices_range=(8, 9), seed=5, workers=1)


def meta(folder: Path) -> dict:
    return json.loads((folder / "synthetic.json").read_text())


def test_layout_csv_and_marker(folder):
    info = meta(folder)
    assert info["synthetic"] is True and info["format"] == "rsna"
    assert "SYNTHETIC" in (folder / "README.md").read_text()
    files = sorted(p.stem for p in (folder / "stage_2_train").iterdir())
    images = sorted(i for s in info["series"] for i in s["images"])
    assert files == images and all(f.startswith("ID_") for f in files)
    lines = (folder / "stage_2_train.csv").read_text().splitlines()
    assert lines[0] == "ID,Label"
    counts = Counter(line.split(",")[0].rpartition("_")[0] for line in lines[1:])
    assert set(counts) == set(images)
    assert sorted(Counter(counts.values()).items()) == [(6, len(images) - 2), (12, 2)]  # 2 repeated
    labels = {line.split(",")[0].rpartition("_")[2] for line in lines[1:]}
    assert labels == set(RSNA_LABEL_ORDER)
    # one patient, two studies; five series in all
    owners = Counter(s["patient_id"] for s in info["series"])
    assert len(info["series"]) == 5 and sorted(owners.values()) == [1, 1, 1, 2]
    assert len({s["study_uid"] for s in info["series"]}) == 5


def test_headers_are_realistic_and_cover_the_hard_cases(folder):
    info = meta(folder)
    seen = set()
    for s in info["series"]:
        enc = ENCODINGS[s["encoding"]]
        numbers = []
        for sop in s["images"]:
            ds = pydicom.dcmread(folder / "stage_2_train" / f"{sop}.dcm")
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.Modality == "CT"
            assert (ds.SOPInstanceUID, ds.SeriesInstanceUID) == (sop, s["series_uid"])
            assert (ds.StudyInstanceUID, ds.PatientID) == (s["study_uid"], s["patient_id"])
            assert ds.BitsStored == enc["bits_stored"] and ds.HighBit == enc["bits_stored"] - 1
            assert ds.PixelRepresentation == enc["pixel_representation"]
            assert float(ds.RescaleIntercept) == enc["intercept"] and float(ds.RescaleSlope) == 1
            assert float(ds.SliceThickness) == 5.0 and len(ds.PixelSpacing) == 2
            assert float(ds.WindowCenter) == 40 and float(ds.WindowWidth) == 80
            assert has_12bit_bug(ds) == (s["encoding"] == "bug12")
            assert ("PixelPaddingValue" in ds) == ("padding" in enc)
            axial = [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert axial != s["tilted"]
            numbers.append(int(ds.InstanceNumber))
        n = len(numbers)
        assert numbers == (list(range(n, 0, -1)) if s["index"] % 2 else list(range(1, n + 1)))
        seen.add(s["encoding"])
    assert seen == set(ENCODINGS)
    assert sum(s["tilted"] for s in info["series"]) == 1


def test_loaded_hu_equal_the_phantom(folder):
    info = meta(folder)
    for s in info["series"]:
        ph = series_phantom(info["seed"], s["index"], info["size"], tuple(info["n_slices_range"]),
                            s["subtypes"])
        files = [folder / "stage_2_train" / f"{sop}.dcm" for sop in s["images"]]
        vol = load_dicom_series(files[::-1])
        expected = np.rint(ph.hu)
        if ENCODINGS[s["encoding"]]["outside"] is not None:
            h, w = expected.shape[1:]
            yy, xx = np.mgrid[:h, :w]
            outside = (np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) > min(h, w) / 2) & (ph.hu < -900)
            assert outside.any()
            expected[outside] = AIR_HU  # padding, -2000 or -3024: all air once loaded
        np.testing.assert_array_equal(vol.hu, expected.astype(np.float32), err_msg=s["encoding"])
        assert vol.spacing == pytest.approx((5.0, ph.spacing[1], ph.spacing[2]))
        if s["encoding"] == "bug12":
            assert vol.hu.max() < 2047 and (vol.hu == AIR_HU).any()


def test_rewrite_is_deterministic_and_foreign_data_is_refused(folder, tmp_path):
    again = write_synthetic_rsna(tmp_path / "again", n_patients=4, size=48, n_slices_range=(8, 9),
                                 seed=5, workers=1)
    assert (again / "stage_2_train.csv").read_text() == (folder / "stage_2_train.csv").read_text()
    first = sorted((folder / "stage_2_train").iterdir())
    assert [p.name for p in first] == sorted(p.name for p in (again / "stage_2_train").iterdir())
    assert first[0].read_bytes() == (again / "stage_2_train" / first[0].name).read_bytes()
    # overwriting its own output with another seed leaves no stale image behind
    write_synthetic_rsna(again, n_patients=1, size=32, n_slices_range=(8, 8), seed=6, workers=1)
    info = meta(again)
    assert sorted(p.stem for p in (again / "stage_2_train").iterdir()) == sorted(
        i for s in info["series"] for i in s["images"])

    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "stage_2_train.csv").write_text("ID,Label\n")
    with pytest.raises(DataError, match="did not generate"):
        write_synthetic_rsna(foreign, n_patients=1, size=32)
    with pytest.raises(ConfigError):
        write_synthetic_rsna(tmp_path / "x", n_patients=0)
    with pytest.raises(ConfigError):
        write_synthetic_rsna(tmp_path / "x", n_slices_range=(4, 6))
