"""The intensity baseline: its feature by hand, and its evaluation on the model's patients."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from ichlib.io.ctich import read_ct_ich
from ichlib.labels import LABELS
from ichlib.preprocess.dataset import PreprocessConfig, ScanDataset
from ichlib.preprocess.hu import intracranial_mask
from ichlib.training.baseline import (
    IntensityBaseline,
    hyperdense_fraction,
    run_intensity_baseline,
    scan_hyperdense_fraction,
)
from tests.conftest import labels_with


def head(n: int = 2, size: int = 48, blob: int = 0) -> np.ndarray:
    """Air, a 40 HU scalp ring, a 1000 HU skull ring, 30 HU brain; a 70 HU square on slice 0."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    hu = np.full((n, size, size), -1000.0, dtype=np.float32)
    hu[:, r < 22] = 40.0    # scalp
    hu[:, r < 20] = 1000.0  # skull
    hu[:, r < 17] = 30.0    # brain
    if blob:
        hu[0, 20:20 + blob, 20:20 + blob] = 70.0
    return hu


def test_hyperdense_fraction_by_hand():
    hu = head(blob=4)
    total, per_slice = hyperdense_fraction(hu)
    n_brain = int(intracranial_mask(hu)[1].sum())
    assert per_slice[0] == pytest.approx(16 / n_brain)
    assert per_slice[1] == 0.0
    assert total == pytest.approx(16 / (2 * n_brain))
    hu[1] = -1000.0  # a slice with no head at all
    assert hyperdense_fraction(hu)[1][1] == 0.0


def test_logistic_mapping_is_monotone_and_handles_one_class_labels():
    feature = np.linspace(0, 0.1, 20)
    labels = np.zeros((20, 6))
    labels[10:, 0] = 1           # any: more blood, more positive
    labels[:, 5] = 1             # subdural: positive everywhere in training
    model = IntensityBaseline().fit(feature, labels)
    p = model.predict_proba(np.array([0.0, 0.05, 0.1]))
    assert p.shape == (3, 6)
    assert p[0, 0] < p[1, 0] < p[2, 0]
    assert p[0, 4] == pytest.approx(0.5 / 21)      # no positives: smoothed prevalence
    assert p[0, 5] == pytest.approx(20.5 / 21)


def test_a_few_extreme_negatives_do_not_flip_the_rule():
    """Slices at the vertex hold little brain and can be mostly "hyperdense" without blood: a
    long tail of negatives. The rule must keep ranking as the feature does (it scored a slice
    AUC of 0.29 when those few slices set the slope of a standardised feature)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    negatives = np.concatenate([rng.uniform(0.0, 0.02, 900), rng.uniform(0.5, 1.0, 30)])
    positives = rng.uniform(0.01, 0.06, 100)
    feature = np.concatenate([negatives, positives])
    labels = np.zeros((len(feature), 6))
    labels[len(negatives):, 0] = 1
    by_feature = roc_auc_score(labels[:, 0], feature)
    assert by_feature > 0.7  # the feature itself ranks the positives higher
    model = IntensityBaseline().fit(feature, labels)
    p = model.predict_proba(feature)[:, 0]
    assert roc_auc_score(labels[:, 0], p) == pytest.approx(by_feature)  # order kept, no ties made
    assert model.predict_proba(np.array([0.005, 0.04]))[:, 0].tolist() == sorted(
        model.predict_proba(np.array([0.005, 0.04]))[:, 0].tolist())
    # values beyond the training range take the extreme rank
    assert model.predict_proba(np.array([2.0]))[0, 0] == pytest.approx(model.predict_proba(np.array([1.0]))[0, 0], abs=0.01)


def test_baseline_is_scored_on_the_given_test_patients(make_ct_ich):
    labels = {49 + i: labels_with(6, (i % 5) if i % 2 else None, 1, 4) for i in range(8)}
    data = read_ct_ich(make_ct_ich(labels, size=32))
    config = PreprocessConfig(img_size=16, seq_len=4)
    ids = data.patient_ids
    train, val, test = (ScanDataset(data, part, config) for part in (ids[:4], ids[4:6], ids[6:]))
    result = run_intensity_baseline(train, val, test, n_boot=20)
    assert set(result["test_probabilities"]) == set(ids[6:])
    report = result["test"]["patient"]
    assert report["n"] == 2 and set(report["labels"]) == set(LABELS)
    assert result["test"]["slice"]["level"] == "slice" and result["test"]["slice"]["n"] == 2 * 4
    assert set(result["thresholds"]) == set(LABELS)
    # Bright blood squares on positive slices: the feature separates any-positive scans.
    val_any = result["val"]["patient"]["labels"]["any"]
    assert val_any["auc"] in (None, 1.0)
    # RSNA's image-level loss reads every slice (6 per scan), not the 4 sampled ones.
    image = result["test"]["image"]
    assert image["n_images"] == 2 * 6 and set(image["by_patient"]) == set(ids[6:])
    assert image["note"] is None and image["ci"] is not None
    assert image["image_weighted_log_loss"] == pytest.approx(
        sum(total for total, _ in image["by_patient"].values()) / 12)
    assert 0 < image["image_weighted_log_loss"] < -math.log(0.5)  # better than a coin: the squares show


def test_scan_feature_is_remembered_per_file_and_read_again_when_the_file_changes(make_ct_ich, monkeypatch):
    import ichlib.training.baseline as baseline

    data = read_ct_ich(make_ct_ich({49: labels_with(4, 0, 1, 2)}, size=32))
    dataset = ScanDataset(data, data.patient_ids, PreprocessConfig(img_size=16, seq_len=4))
    pid = data.patient_ids[0]
    reads = []
    original = dataset.resized_volume
    monkeypatch.setattr(dataset, "resized_volume", lambda p: reads.append(p) or original(p))
    total, per_slice = scan_hyperdense_fraction(dataset, pid)
    expected_total, expected_slices = hyperdense_fraction(original(pid))
    assert total == expected_total and np.array_equal(per_slice, expected_slices)
    per_slice[:] = -1.0  # the caller's copy
    again, slices_again = scan_hyperdense_fraction(dataset, pid)
    assert reads == [pid] and again == total and np.array_equal(slices_again, expected_slices)
    path = data.scans[pid]
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the file was rewritten
    scan_hyperdense_fraction(dataset, pid)
    assert reads == [pid, pid]
    assert len(baseline._MEMO) <= baseline._MEMO_SIZE
