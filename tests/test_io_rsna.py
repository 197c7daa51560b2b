"""RSNA 2019 layout: labels by name, slice order = volume order, grouping, cache and checks."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

import ichlib.preprocess.dataset
from ichlib.errors import ConfigError, DataError
from ichlib.io.check import check_rsna
from ichlib.io.dicom.series import load_dicom_series
from ichlib.io.folder import detect_format
from ichlib.io.rsna import (
    RSNA_LABEL_ORDER,
    DuplicateLabelWarning,
    find_rsna_image_dir,
    read_rsna,
    read_rsna_images,
    read_rsna_labels,
    rsna_image_id,
)
from ichlib.io.tables import CtIchData
from ichlib.labels import LABELS
from ichlib.preprocess.splits import rsna_group_split
from ichlib.synthetic.rsna import ct_dataset, write_dataset, write_synthetic_rsna


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """Five synthetic patients (six series), 48 px, 8-10 slices."""
    return write_synthetic_rsna(tmp_path_factory.mktemp("rsna") / "data", n_patients=5, size=48,
                                n_slices_range=(8, 10), seed=3, workers=1)


def read(root: Path, cache: Path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DuplicateLabelWarning)
        return read_rsna(root, cache_dir=cache, **kwargs)


def csv_labels(root: Path) -> dict[str, dict[str, int]]:
    """The CSV parsed independently of ichlib: image id -> {label: value}."""
    out: dict[str, dict[str, int]] = {}
    for line in (root / "stage_2_train.csv").read_text().splitlines()[1:]:
        ident, value = line.split(",")
        image, _, label = ident.rpartition("_")
        out.setdefault(image, {})[label] = int(value)
    return out


# --- a hand-made folder where each slice says which one it is --------------------------------

def write_marked_rsna(root: Path, n: int = 6, positive=(1, 2), label_rows=None,
                      extra_csv: str = "") -> dict:
    """One series whose slice k (in position order) has HU 100*k at pixel [0, 0].

    Files are named and numbered against the position order; slices in ``positive`` have
    subdural (and any). The CSV lists each image's rows in reverse RSNA order.
    """
    images = root / "stage_2_train"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    ids = {}
    for k in range(n):
        sop = f"ID_{order[k]:03d}aa{k}"
        ids[k] = sop
        hu = np.full((8, 8), 20, dtype=np.int16)
        hu[0, 0] = 100 * k
        ds = ct_dataset(hu + 1024, sop_uid=sop, series_uid="ID_series1", study_uid="ID_study1",
                        patient_id="ID_pat1", position=(0.0, 0.0, 50.0 - 5.0 * (n - 1 - k)),
                        instance_number=int(order[k]) + 1)
        write_dataset(images / f"{sop}.dcm", ds)
    lines = ["ID,Label"]
    for k in rng.permutation(n):
        lab = {name: 0 for name in RSNA_LABEL_ORDER}
        if k in positive:
            lab["subdural"] = lab["any"] = 1
        rows = label_rows(k, lab) if label_rows else lab
        lines += [f"{ids[k]}_{name},{rows[name]}" for name in reversed(RSNA_LABEL_ORDER)]
    (root / "stage_2_train.csv").write_text("\n".join(lines) + "\n" + extra_csv)
    return ids


def test_slice_labels_follow_the_volume_slice_order(tmp_path):
    write_marked_rsna(tmp_path / "r", n=6, positive=(1, 2))
    data = read(tmp_path / "r", tmp_path / "cache")
    assert isinstance(data, CtIchData) and data.patient_ids == ["ID_series1"]
    vol = load_dicom_series(data.scans["ID_series1"])
    labels = data.slice_labels("ID_series1")
    assert labels.shape == (6, len(LABELS))
    for j in range(6):
        k = int(round(vol.hu[j, 0, 0] / 100))          # which slice this really is
        expected = 1.0 if k in (1, 2) else 0.0
        assert labels[j, LABELS.index("subdural")] == expected
        assert labels[j, LABELS.index("any")] == expected
        assert labels[j, LABELS.index("epidural")] == 0.0  # read by name, not by position
    assert vol.hu[:, 0, 0].tolist() == [0, 100, 200, 300, 400, 500]
    assert data.scan_labels("ID_series1")[LABELS.index("subdural")] == 1.0
    assert data.masks == {"ID_series1": None}


def test_synthetic_series_in_ground_truth_order_with_csv_labels(synthetic, tmp_path):
    data = read(synthetic, tmp_path / "cache")
    truth = json.loads((synthetic / "synthetic.json").read_text())
    by_csv = csv_labels(synthetic)
    assert sorted(data.patient_ids) == sorted(s["series_uid"] for s in truth["series"])
    for series in truth["series"]:
        uid = series["series_uid"]
        rows = data.slices[data.slices["patient_id"] == uid]
        # skull base to vertex, whatever InstanceNumber, file names or the gantry tilt say
        assert rows["image_id"].tolist() == series["images"]
        assert rows["slice_number"].tolist() == list(range(1, len(series["images"]) + 1))
        expected = np.array([[by_csv[i][lab] for lab in LABELS] for i in series["images"]])
        np.testing.assert_array_equal(data.slice_labels(uid), expected.astype(np.float32))
        np.testing.assert_array_equal(data.scan_labels(uid), expected.max(axis=0))
        assert data.patients.loc[uid, "n_slices"] == len(series["images"])
        assert data.patients.loc[uid, "patient_id_dicom"] == series["patient_id"]
    assert {s["encoding"] for s in truth["series"]} >= {"bug12", "padding", "uint12", "int16_fov"}
    assert any(s["tilted"] for s in truth["series"])


def test_duplicate_rows_dropped_with_a_warning(synthetic, tmp_path):
    with pytest.warns(DuplicateLabelWarning, match=r"dropped 12 duplicate row\(s\) of 2 image"):
        data = read_rsna(synthetic, cache_dir=tmp_path / "cache")
    assert not data.problems


def test_conflicting_or_bad_labels_drop_the_series(tmp_path):
    ids = write_marked_rsna(tmp_path / "r", n=4, extra_csv="")
    csv = tmp_path / "r" / "stage_2_train.csv"
    csv.write_text(csv.read_text() + f"{ids[0]}_subdural,1\n")   # contradicts the 0 above
    with pytest.raises(DataError, match=r"(?s)1 problem\(s\).*ID_series1.*conflicting rows 21, 26"):
        read(tmp_path / "r", tmp_path / "cache")
    data = read(tmp_path / "r", tmp_path / "cache", on_error="skip")
    assert data.patient_ids == [] and data.problems[0].patient_id == "ID_series1"

    labels, bad, problems = read_rsna_labels(_csv(tmp_path, [
        "ID_a_any,1", "ID_a_epidural,0", "ID_a_intraparenchymal,0", "ID_a_intraventricular,0",
        "ID_a_subarachnoid,0", "ID_a_subdural,0",                        # any without a subtype
        "ID_b_any,0", "ID_b_epidural,x",                                 # not 0/1, rows missing
        "ID_c_nonsense,1"]))
    assert "any = 1 but no subtype is 1" in bad["ID_a"]
    assert "expected 0 or 1" in bad["ID_b"] and labels.empty
    assert "not <image>_<label>" in problems[0].problem


def _csv(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text("ID,Label\n" + "\n".join(rows) + "\n")
    return path


def test_a_duplicated_label_column_is_refused_naming_it(tmp_path):
    write_marked_rsna(tmp_path / "r", n=4)
    csv = tmp_path / "r" / "stage_2_train.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0] + ",Label"] + [line + ",1" for line in lines[1:]]) + "\n")
    for reader in (read_rsna_labels, lambda _: read(tmp_path / "r", tmp_path / "cache")):
        with pytest.raises(DataError, match=r"column 'Label' appears 2 times in the header "
                                            r"\(columns 2, 3\)") as info:
            reader(csv)
        assert info.value.path == str(csv)


def test_images_without_labels_and_labels_without_images(tmp_path):
    ids = write_marked_rsna(tmp_path / "r", n=4)
    csv = tmp_path / "r" / "stage_2_train.csv"
    kept = [line for line in csv.read_text().splitlines() if not line.startswith(ids[3])]
    csv.write_text("\n".join(kept + [f"ID_nofile_{n},0" for n in RSNA_LABEL_ORDER]) + "\n")
    data = read(tmp_path / "r", tmp_path / "cache", on_error="skip")
    text = " | ".join(p.problem for p in data.problems)
    assert "1 of 4 image(s) have no labels" in text and f"{ids[3]}.dcm" in text
    assert "1 labelled image(s) have no DICOM file" in text and "ID_nofile" in text


def test_grouped_split_keeps_every_series_of_a_person_together(synthetic, tmp_path):
    data = read(synthetic, tmp_path / "cache")
    pats = data.patients
    two = pats.groupby("patient_id_dicom").size()
    assert two.max() == 2  # the synthetic patient with two studies
    for seed in range(8):
        parts = rsna_group_split(pats, val_fraction=0.2, test_fraction=0.2, seed=seed)
        assert sorted(sum(parts.values(), [])) == sorted(pats.index)
        where = {sid: name for name, ids in parts.items() for sid in ids}
        for _, group in pats.groupby("patient_id_dicom"):
            assert len({where[s] for s in group.index}) == 1
    with pytest.raises(ConfigError, match="no 'site' column"):
        rsna_group_split(pats, group="site")


def test_header_cache_second_read_opens_no_dicom_file(synthetic, tmp_path, monkeypatch):
    real = pydicom.dcmread
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    n_files = len(list((synthetic / "stage_2_train").glob("*.dcm")))
    first = read(synthetic, tmp_path / "cache")
    assert len(calls) == n_files
    calls.clear()
    second = read(synthetic, tmp_path / "cache")
    assert calls == []
    pd.testing.assert_frame_equal(first.slices, second.slices)
    pd.testing.assert_frame_equal(first.patients, second.patients)
    assert first.scans == second.scans
    # a changed file (new mtime) is the only one read again
    one = sorted((synthetic / "stage_2_train").glob("*.dcm"))[0]
    st = one.stat()
    try:
        os.utime(one, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        read(synthetic, tmp_path / "cache")
        assert len(calls) == 1
    finally:
        os.utime(one, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_detect_format(synthetic, small_ct_ich, tmp_path):
    assert detect_format(synthetic) == "rsna"
    assert detect_format(small_ct_ich) == "ct-ich"
    with pytest.raises(DataError, match="unknown dataset layout"):
        detect_format(tmp_path)
    with pytest.raises(DataError, match="not found"):
        detect_format(tmp_path / "nope")


def test_check_rsna_reports_each_bad_series_and_keeps_the_rest(tmp_path, synthetic):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synthetic, root)
    truth = json.loads((root / "synthetic.json").read_text())
    series = truth["series"]
    # series 0: a truncated image; series 1: a slice missing (a gap); plus a junk .dcm file
    victim = root / "stage_2_train" / f"{series[0]['images'][3]}.dcm"
    victim.write_bytes(victim.read_bytes()[:-500])
    (root / "stage_2_train" / f"{series[1]['images'][4]}.dcm").unlink()
    (root / "stage_2_train" / "ID_junk.dcm").write_text("not dicom")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DuplicateLabelWarning)
        report = check_rsna(root, cache_dir=tmp_path / "cache")
    assert not report.ok
    by_series = {p.patient_id: p for p in report.problems}
    assert "pixel data is truncated" in by_series[series[0]["series_uid"]].problem
    assert by_series[series[0]["series_uid"]].path == str(victim)
    assert "gap" in by_series[series[1]["series_uid"]].problem
    junk = [p for p in report.problems if p.path.endswith("ID_junk.dcm")]
    assert junk and "not a DICOM file" in junk[0].problem
    assert sorted(report.data.patient_ids) == sorted(s["series_uid"] for s in series[2:])
    summary = report.summary()
    assert "problem(s)" in summary and "patients: 4" in summary
    assert set(report.to_json()["patients"]) == set(report.data.patient_ids)


def test_a_slice_whose_rescale_overflows_is_refused_on_loading_and_by_check(tmp_path):
    ids = write_marked_rsna(tmp_path / "r", n=6)
    victim = tmp_path / "r" / "stage_2_train" / f"{ids[4]}.dcm"
    ds = pydicom.dcmread(victim)
    ds.RescaleSlope = 1e38
    ds.save_as(victim)
    data = read(tmp_path / "r", tmp_path / "cache")  # headers only: the slope is a finite number
    with pytest.raises(DataError, match=r"slice InstanceNumber \d+: RescaleSlope 1e\+38 .* not finite") as info:
        load_dicom_series(data.scans["ID_series1"])
    assert info.value.path == str(victim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DuplicateLabelWarning)
        report = check_rsna(tmp_path / "r", cache_dir=tmp_path / "cache")
    assert not report.ok and [p.path for p in report.problems] == [str(victim)]
    assert "not finite" in report.problems[0].problem


def test_scan_dataset_runs_on_rsna_series(synthetic, tmp_path):
    # ScanDataset reads each series through its .series manifest (ichlib.io.load dispatches).
    data = read(synthetic, tmp_path / "cache")
    config = ichlib.preprocess.dataset.PreprocessConfig(windows=("brain", "subdural"), img_size=32, seq_len=6)
    ids = data.patient_ids[:2]
    for cache in (None, tmp_path / "vols"):
        ds = ichlib.preprocess.dataset.ScanDataset(data, ids, config=config, cache_dir=cache)
        item = ds[1]
        assert tuple(item["x"].shape) == (6, 2, 32, 32)
        idx = item["slice_indices"].numpy()
        np.testing.assert_array_equal(item["slice_labels"].numpy(), data.slice_labels(ids[1])[idx])
        assert item["patient_id"] == ids[1]


def test_an_unlabelled_image_folder_is_grouped_into_ordered_series(tmp_path, synthetic):
    import shutil

    root = tmp_path / "test_set"
    shutil.copytree(synthetic / "stage_2_train", root / "stage_2_test")  # no label table
    truth = json.loads((synthetic / "synthetic.json").read_text())["series"]
    # series 0: one image truncated (the series fails); series 1: a junk file beside it
    victim = root / "stage_2_test" / f"{truth[0]['images'][2]}.dcm"
    victim.write_bytes(victim.read_bytes()[:-500])
    (root / "stage_2_test" / "ID_junk.dcm").write_text("not dicom")
    assert find_rsna_image_dir(root) == root / "stage_2_test"
    assert find_rsna_image_dir(root / "stage_2_test") == root / "stage_2_test"
    images = read_rsna_images(find_rsna_image_dir(root), cache_dir=tmp_path / "cache")
    assert {uid: [rsna_image_id(h) for h in layout.headers] for uid, layout in images.series.items()} == {
        s["series_uid"]: s["images"] for s in truth[1:]}
    assert set(images.unusable) == {*truth[0]["images"], "ID_junk"}
    assert "pixel data is truncated" in images.unusable[truth[0]["images"][0]].problem
    assert images.unusable[truth[0]["images"][0]].patient_id == truth[0]["series_uid"]
    with pytest.raises(DataError, match="holds no \\*.dcm file"):
        find_rsna_image_dir(tmp_path / "cache")
