"""The synthetic head-CT phantom: the CT-ICH layout it writes, and the anatomy it draws."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from ichlib.errors import ConfigError, DataError
from ichlib.io.load import load_mask, load_volume, read_header
from ichlib.io.nifti import save_volume
from ichlib.labels import CT_ICH_COLUMNS, SUBTYPES
from ichlib.synthetic import phantom
from ichlib.synthetic.phantom import (
    TISSUE,
    make_phantom,
    patient_ids,
    plan_subtypes,
    write_synthetic_ct_ich,
)

HEADER = ("PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,"
          "Subdural,No_Hemorrhage,Fracture_Yes_No")
PARENCHYMA = [TISSUE[n] for n in ("grey", "white", "deep_grey", "cerebellum", "brainstem")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Ten small patients (every subtype appears at least once with n >= 10)."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    return write_synthetic_ct_ich(out, n_patients=10, size=64, seed=3, n_slices_range=(12, 16),
                                  workers=1)


@pytest.fixture(scope="module")
def sick() -> phantom.Phantom:
    """One patient with all five subtypes, at a resolution where shapes can be checked."""
    return make_phantom(np.random.default_rng(11), size=160, n_slices=30, subtypes=SUBTYPES)


@pytest.fixture(scope="module")
def labels(dataset: Path) -> pd.DataFrame:
    """The dataset's slice table."""
    return pd.read_csv(dataset / "hemorrhage_diagnosis_raw_ct.csv")


# --- layout --------------------------------------------------------------------------------

def test_writes_the_ct_ich_layout(dataset: Path):
    names = [f"{i:03d}.nii" for i in range(1, 11)]
    assert sorted(p.name for p in (dataset / "ct_scans").iterdir()) == names
    assert sorted(p.name for p in (dataset / "masks").iterdir()) == names
    first_line = (dataset / "hemorrhage_diagnosis_raw_ct.csv").read_text().splitlines()[0]
    assert first_line == HEADER
    assert "SYNTHETIC" in (dataset / "README.md").read_text()
    meta = json.loads((dataset / "synthetic.json").read_text())
    assert meta["seed"] == 3 and meta["size"] == 64 and meta["n_patients"] == 10
    assert meta["synthetic"] is True and meta["ichlib_version"]


def test_volumes_match_the_label_table(dataset: Path, labels: pd.DataFrame):
    for pid, rows in labels.groupby("PatientNumber"):
        header = read_header(dataset / "ct_scans" / f"{pid:03d}.nii")
        assert header.shape[0] == len(rows) and 12 <= len(rows) <= 16
        assert header.shape[1:] == (64, 64)
        assert header.spacing[0] == 5.0 and header.spacing[1] == pytest.approx(3.6, rel=0.05)
        assert header.dtype == np.int16
        assert list(rows["SliceNumber"]) == list(range(1, len(rows) + 1))


def test_files_hold_the_phantom_of_each_patients_own_generator(dataset: Path):
    plan = plan_subtypes(10, seed=3)
    rng = np.random.default_rng([3, 2])
    n_slices = int(rng.integers(12, 17))
    ph = make_phantom(rng, size=64, n_slices=n_slices, subtypes=plan[1])
    vol = load_volume(dataset / "ct_scans" / "002.nii")
    assert vol.spacing == pytest.approx(ph.spacing)
    assert np.array_equal(vol.hu, np.rint(ph.hu))
    assert np.array_equal(load_mask(dataset / "masks" / "002.nii"), ph.mask)


def test_patient_ids_follow_ct_ich_for_75_and_count_otherwise():
    ids = patient_ids(75)
    assert ids[:10] == list(range(49, 59)) and ids[10:] == list(range(66, 131))
    assert len(set(ids)) == 75
    assert patient_ids(4) == [1, 2, 3, 4]
    for bad in (0, 1000):
        with pytest.raises(ConfigError):
            patient_ids(bad)


def test_patient_number_is_written_without_zero_padding(dataset: Path):
    second_line = (dataset / "hemorrhage_diagnosis_raw_ct.csv").read_text().splitlines()[1]
    assert second_line.startswith("1,1,")


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path: Path):
    kw = dict(n_patients=3, size=48, n_slices_range=(8, 10))
    a = write_synthetic_ct_ich(tmp_path / "a", seed=5, workers=1, **kw)
    b = write_synthetic_ct_ich(tmp_path / "b", seed=5, workers=2, **kw)
    c = write_synthetic_ct_ich(tmp_path / "c", seed=6, workers=1, **kw)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 3 * 2 + 4
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "ct_scans/001.nii").read_bytes() != (c / "ct_scans/001.nii").read_bytes()


def test_an_interrupted_run_leaves_no_completion_marker(tmp_path: Path, monkeypatch):
    out = write_synthetic_ct_ich(tmp_path / "ds", n_patients=2, size=48, n_slices_range=(8, 8),
                                 workers=1)
    assert (out / "synthetic.json").exists()

    def crash(task):
        raise RuntimeError("disk full")

    monkeypatch.setattr(phantom, "_write_patient", crash)
    with pytest.raises(RuntimeError):
        write_synthetic_ct_ich(out, n_patients=2, size=48, n_slices_range=(8, 8), workers=1)
    assert not (out / "synthetic.json").exists()


def test_refuses_to_overwrite_a_folder_it_did_not_write(tmp_path: Path):
    save_volume(tmp_path / "ct_scans" / "049.nii", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(DataError, match="did not generate"):
        write_synthetic_ct_ich(tmp_path, n_patients=2, size=48, workers=1)
    assert (tmp_path / "ct_scans" / "049.nii").exists()


def test_rerun_with_fewer_patients_removes_stale_scans(tmp_path: Path):
    write_synthetic_ct_ich(tmp_path, n_patients=3, size=48, n_slices_range=(8, 8), workers=1)
    write_synthetic_ct_ich(tmp_path, n_patients=2, size=48, n_slices_range=(8, 8), workers=1)
    assert sorted(p.name for p in (tmp_path / "ct_scans").iterdir()) == ["001.nii", "002.nii"]


# --- labels -------------------------------------------------------------------------------

def test_slice_labels_agree_with_the_masks(dataset: Path, labels: pd.DataFrame):
    cols = list(CT_ICH_COLUMNS.values())
    for pid, rows in labels.groupby("PatientNumber"):
        mask = load_mask(dataset / "masks" / f"{pid:03d}.nii")
        has_blood = mask.any(axis=(1, 2))
        assert np.array_equal(has_blood, rows[cols].to_numpy().any(axis=1))
        assert np.array_equal(rows["No_Hemorrhage"].to_numpy(), (~has_blood).astype(int))
    assert set(np.unique(labels[cols + ["No_Hemorrhage", "Fracture_Yes_No"]])) <= {0, 1}


def test_every_subtype_appears_and_spans_consecutive_slices(labels: pd.DataFrame):
    for col in CT_ICH_COLUMNS.values():
        assert labels[col].sum() > 0, col
        for _, rows in labels.groupby("PatientNumber"):
            on = np.flatnonzero(rows[col].to_numpy())
            if on.size:
                assert on[-1] - on[0] + 1 == on.size, (col, on)
    assert (labels.groupby("PatientNumber")["No_Hemorrhage"].min() == 1).any()


def test_phantom_labels_follow_each_subtype_mask(sick: phantom.Phantom):
    assert set(sick.masks) == set(SUBTYPES)
    for sub in SUBTYPES:
        per_slice = sick.masks[sub].any(axis=(1, 2)).astype(np.int8)
        assert np.array_equal(sick.slice_labels[sub], per_slice)
        on = np.flatnonzero(per_slice)
        assert on[-1] - on[0] + 1 == on.size
    assert np.array_equal(sick.no_hemorrhage, (~sick.mask.any(axis=(1, 2))).astype(np.int8))


def test_demographics_have_a_two_row_header_and_match_the_slices(dataset: Path,
                                                                labels: pd.DataFrame):
    demo = pd.read_csv(dataset / "Patient_demographics.csv", header=[0, 1])
    assert len(demo) == 10
    top = [c[0] for c in demo.columns]
    assert top[:3] == ["Patient Number", "Age (years)", "Gender"]
    assert "Fracture (yes 1/no 0)" in top and "Note" in top
    second = [c[1] for c in demo.columns]
    per_patient = labels.groupby("PatientNumber").max()
    for col in CT_ICH_COLUMNS.values():
        flags = demo[demo.columns[second.index(col)]].to_numpy()
        assert np.array_equal(flags, per_patient[col].to_numpy())
    fracture = demo[demo.columns[top.index("Fracture (yes 1/no 0)")]].to_numpy()
    assert np.array_equal(fracture, per_patient["Fracture_Yes_No"].to_numpy())
    assert demo[demo.columns[1]].between(1, 100).all()
    assert set(demo[demo.columns[2]]) <= {"Male", "Female"}


def test_prevalence_is_close_to_ct_ich():
    plan = plan_subtypes(75, seed=0)
    positives = sum(bool(p) for p in plan)
    assert 25 <= positives <= 50
    counts = {s: sum(s in p for p in plan) for s in SUBTYPES}
    assert min(counts.values()) >= 1
    assert counts["epidural"] > counts["subdural"] and counts["intraparenchymal"] > counts["subdural"]
    small = plan_subtypes(10, seed=4)
    assert {s for p in small for s in p} == set(SUBTYPES) and any(not p for p in small)


def test_unknown_subtype_is_refused():
    with pytest.raises(ConfigError, match="unknown subtype"):
        make_phantom(np.random.default_rng(0), size=64, n_slices=10, subtypes=("chronic",))


# --- anatomy and intensities ----------------------------------------------------------------

def test_tissue_intensities_are_ct_like(sick: phantom.Phantom):
    hu, tissue = sick.hu, sick.tissue
    assert abs(float(np.median(hu[:, :4, :4])) + 1000) < 10          # air
    bone = hu[tissue == TISSUE["bone"]]
    assert 700 <= float(np.median(bone)) and 1300 <= float(bone.max()) <= 2600
    brain = hu[np.isin(tissue, PARENCHYMA)]
    assert 20 <= float(np.median(brain)) <= 45
    grey, white = (float(np.median(hu[tissue == TISSUE[n]])) for n in ("grey", "white"))
    assert grey > white + 3
    near_bone = ndimage.binary_dilation(hu > 300, iterations=2)
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    for sub, mask in sick.masks.items():   # blood away from bone and from the mask's rim
        core = ndimage.binary_erosion(mask, in_plane) & ~near_bone
        assert core.sum() > 5, sub
        assert 50 <= float(hu[core].mean()) <= 90, sub


def test_noise_in_white_matter_is_a_few_hu(sick: phantom.Phantom):
    k = int(np.argmax((sick.tissue == TISSUE["white"]).sum(axis=(1, 2))))
    core = ndimage.binary_erosion(sick.tissue[k] == TISSUE["white"], iterations=3)
    core &= ~ndimage.binary_dilation(sick.mask[k], iterations=8)
    assert core.sum() > 200
    assert 3 <= float(sick.hu[k][core].std()) <= 8


def test_row_zero_is_anterior(sick: phantom.Phantom):
    def centre_row(code: str) -> float:
        return float(np.nonzero(sick.tissue == TISSUE[code])[1].mean())

    h = sick.hu.shape[1]
    assert centre_row("globe") < 0.4 * h
    assert centre_row("cerebellum") > 0.5 * h


def test_head_shrinks_towards_vertex_and_ventricles_are_mid_level(sick: phantom.Phantom):
    area = (sick.tissue != TISSUE["air"]).sum(axis=(1, 2))
    n = len(area)
    assert area[-1] < 0.6 * area.max() and area[0] < area.max()
    assert n // 4 < int(np.argmax(area)) < 3 * n // 4
    vent = np.flatnonzero((sick.tissue == TISSUE["ventricle"]).sum(axis=(1, 2)) > 20)
    assert vent.min() > 0.15 * n and vent.max() < 0.8 * n


def test_head_keeps_its_size_in_mm_at_any_resolution():
    widths = []
    for size in (64, 128):
        ph = make_phantom(np.random.default_rng(2), size=size, n_slices=12)
        k = int(np.argmax((ph.tissue != TISSUE["air"]).sum(axis=(1, 2))))
        cols = np.flatnonzero((ph.tissue[k] != TISSUE["air"]).any(axis=0))
        widths.append((cols[-1] - cols[0] + 1) * ph.spacing[2])
    assert 130 < widths[1] < 190
    assert widths[0] == pytest.approx(widths[1], rel=0.1)


def test_each_subtype_lies_where_it_should(sick: phantom.Phantom):
    tissue, px = sick.tissue, sick.spacing[1]
    bone = tissue == TISSUE["bone"]
    cavity = np.isin(tissue, PARENCHYMA + [TISSUE[n] for n in (
        "csf", "ventricle", "choroid", "calcification", "dura", "venous_sinus")])
    for sub, mask in sick.masks.items():
        assert cavity[mask].all(), sub
    for sub, max_mm in (("epidural", 32.0), ("subdural", 18.0)):
        mask = sick.masks[sub]
        for k in np.flatnonzero(mask.any(axis=(1, 2))):
            to_bone = ndimage.distance_transform_edt(~bone[k]) * px
            assert to_bone[mask[k]].min() <= 1.5 * px, (sub, k)
            assert to_bone[mask[k]].max() <= max_mm, (sub, k)
    ventricle = np.isin(tissue, [TISSUE["ventricle"], TISSUE["choroid"]])
    assert ventricle[sick.masks["intraventricular"]].all()
    assert np.isin(tissue[sick.masks["intraparenchymal"]], PARENCHYMA).all()
    sah = tissue[sick.masks["subarachnoid"]]
    assert not np.isin(sah, [TISSUE["ventricle"], TISSUE["white"]]).any()
    assert (sah == TISSUE["csf"]).mean() > 0.3


def test_normal_heads_have_no_blood_but_may_have_dense_mimics():
    ph = make_phantom(np.random.default_rng(0), size=96, n_slices=20)
    assert not ph.masks and ph.no_hemorrhage.all()
    dense = [int((make_phantom(np.random.default_rng(s), size=96, n_slices=20).tissue
                  == TISSUE["calcification"]).any()) for s in range(4)]
    assert sum(dense) >= 1
