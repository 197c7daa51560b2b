"""ichlib.explore on the hand-built CT-ICH folder of conftest, where every answer is known.

small_ct_ich: 049 negative (6 slices); 050 epidural on slices 3-4 (8 slices); 051 subdural on
slices 2-3 and intraparenchymal on slices 3-5 (5 slices); 052 negative (3 slices). Blood is a
4x4 square of exactly 70 HU; the head around it is 30 HU with noise of sd 3.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ichlib.errors import ConfigError
from ichlib.explore import (
    BRAIN,
    absent_tissues,
    contrast_per_window,
    example_scan,
    fracture_table,
    hu_samples,
    label_names,
    lesion_slice,
    patients_with_subtype_alone,
    slice_at_height,
    subtype_alone,
    window_table,
)
from ichlib.io.ctich import read_ct_ich


@pytest.fixture
def data(small_ct_ich):
    return read_ct_ich(small_ct_ich)


def test_subtype_alone_needs_the_subtype_and_no_other():
    #                  any IPH IVH SAH EDH SDH
    labels = np.array([[0, 0, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0],   # IPH alone
                       [1, 1, 0, 0, 0, 1],   # IPH with SDH
                       [1, 0, 0, 0, 0, 1]])  # SDH alone
    assert subtype_alone(labels, "intraparenchymal").tolist() == [False, True, False, False]
    assert subtype_alone(labels, "subdural").tolist() == [False, False, False, True]
    assert not subtype_alone(labels, "epidural").any()
    table = pd.DataFrame(labels, columns=["any", "intraparenchymal", "intraventricular",
                                          "subarachnoid", "epidural", "subdural"])
    assert subtype_alone(table, "subdural").tolist() == [False, False, False, True]
    with pytest.raises(ConfigError, match="unknown subtype"):
        subtype_alone(labels, "any")


def test_patients_with_a_subtype_alone(data):
    assert patients_with_subtype_alone(data, "epidural") == ["050"]
    assert patients_with_subtype_alone(data, "subdural") == ["051"]  # slice 2 only
    assert patients_with_subtype_alone(data, "intraventricular") == []


def test_hu_samples_read_blood_on_single_subtype_slices_and_brain_around_it(data):
    table = hu_samples(data, n_scans=4, n_voxels=10, seed=0)
    counts = table.groupby("tissue").size().to_dict()
    # 050: 2 epidural slices x 16 voxels; 051: 2 intraparenchymal-only slices, 1 subdural-only
    assert counts == {BRAIN: 20, "epidural": 10, "intraparenchymal": 10, "subdural": 10}
    blood = table[table["tissue"] != BRAIN]
    assert np.allclose(blood["HU"], 70.0)
    brain = table.loc[table["tissue"] == BRAIN, "HU"]
    assert abs(brain.mean() - 30.0) < 3 and brain.max() < 50  # no blood voxel among them
    assert set(table["patient_id"]) == {"050", "051"}
    assert absent_tissues(table) == ["intraventricular", "subarachnoid"]
    with pytest.raises(ConfigError):
        hu_samples(data, n_scans=0)


def test_hu_samples_take_at_most_n_voxels_without_repeats(data):
    table = hu_samples(data, n_scans=1, n_voxels=100, seed=0)
    assert (table["tissue"] == "subdural").sum() == 16  # the one slice's 4x4 square, once each


def test_contrast_per_window_matches_the_window_arithmetic(data):
    table = contrast_per_window(data, ["brain", (40.0, 40.0)])
    assert list(table.columns) == ["window", "lesion", "reference", "contrast", "cnr", "patient_id"]
    assert sorted(set(table["patient_id"])) == ["050", "051"]
    brain = table[table["window"] == "brain"]
    # brain window 40/80: 70 HU -> 0.875, 30 HU -> 0.375
    assert np.allclose(brain["lesion"], 0.875) and np.allclose(brain["contrast"], 0.5, atol=0.02)
    narrow = table[table["window"] == "40/40"]
    assert np.allclose(narrow["lesion"], 1.0)  # 70 HU is above 40 + 20: clipped to white
    assert len(contrast_per_window(data, ["brain"], max_patients=1)) == 1


def test_example_scan_is_the_longest_with_blood(data):
    assert example_scan(data.patients) == "050"
    negatives = data.patients[data.patients["any"] == 0]
    assert example_scan(negatives) == "049"  # no blood anywhere: the longest scan
    with pytest.raises(ConfigError):
        example_scan(data.patients.iloc[:0])


def test_fracture_table_counts_slices(data):
    table = fracture_table(data.slices)
    assert table.to_dict() == {"no epidural": {"no fracture": 20, "fracture": 0},
                               "epidural": {"no fracture": 2, "fracture": 0}}


def test_lesion_slice_reads_the_largest_mask(data):
    found = lesion_slice(data, "epidural")
    assert (found.patient_id, found.slice_number, found.n_slices) == ("050", 3, 8)
    assert found.mask.sum() == 16 and found.hu[found.mask].min() == 70.0
    assert lesion_slice(data, "intraventricular") is None
    assert lesion_slice(data, "intraventricular", fallback="any").subtype == "any"


def test_slice_at_height(data):
    middle = slice_at_height(data, "050", 0.5)
    assert (middle.slice_number, middle.n_slices, middle.hu.shape) == (5, 8, (32, 32))
    assert slice_at_height(data, "050", 1.0).slice_number == 8
    assert slice_at_height(data, "050", 0.3).mask.sum() == 16  # slice 3: the epidural
    with pytest.raises(ConfigError):
        slice_at_height(data, "050", 1.5)


def test_window_table_spans_centre_plus_minus_half_the_width():
    table = window_table({"brain": (40.0, 80.0), "bone": (600.0, 2800.0)})
    assert table.loc["brain"].tolist() == [40.0, 80.0, 0.0, 80.0]
    assert table.loc["bone", "low"] == -800.0 and table.loc["bone", "high"] == 2000.0


def test_label_names_lists_subtypes_only():
    assert label_names([1, 0, 0, 0, 1, 1]) == ["epidural", "subdural"]
    assert label_names([0, 0, 0, 0, 0, 0]) == []
