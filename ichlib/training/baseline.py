"""An honest trivial baseline: how much of the brain is as dense as fresh blood?

No image learning at all. Per scan, the one feature is the fraction of intracranial
tissue voxels whose HU lies in the hyperdense band 50-90 HU (acute blood; grey matter is
about 35-45 HU, white matter 20-30 HU). The CNN + BiLSTM should beat this by a clear
margin; if it does not, it has learned little more than "bright pixels".

The fraction is a score already (ROC AUC only ranks). To get probabilities for log loss,
one logistic regression per label maps the feature's rank among the training values to a
probability, fitted on the training patients only (:class:`IntensityBaseline` says why the
rank); it may learn a negative slope if training says so. The same
feature per slice, with its own per-label regressions fitted on training slices, gives
slice-level predictions. Thresholds come from validation; metrics from the test patients
the model is tested on, with :func:`ichlib.training.metrics.score_predictions`.

Intracranial tissue and the blood band come from :mod:`ichlib.preprocess.hu`
(:func:`~ichlib.preprocess.hu.intracranial_mask`, :data:`~ichlib.preprocess.hu.BLOOD_HU`), the
same definitions the intensity map of :mod:`ichlib.explain.localization` uses.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from ichlib.labels import LABELS
from ichlib.preprocess.dataset import ScanDataset
from ichlib.preprocess.hu import BLOOD_HU, in_band, intracranial_mask
from ichlib.preprocess.sampling import uniform_indices
from ichlib.training.metrics import (
    choose_thresholds,
    flatten_slices,
    image_level_report,
    score_predictions,
)

DESCRIPTION = ("fraction of intracranial 0-100 HU voxels in 50-90 HU, mapped to a probability "
               "per label by a one-feature logistic regression on its rank among the training patients")


def hyperdense_fraction(hu: np.ndarray) -> tuple[float, np.ndarray]:
    """The baseline feature for a HU volume ``[N, H, W]``.

    Returns:
        The fraction of intracranial voxels in 50-90 HU over the whole scan, and the same
        fraction per slice ``[N]`` (0 for a slice without intracranial voxels).
    """
    hu = np.asarray(hu, dtype=np.float32)
    brain = intracranial_mask(hu)
    dense = brain & in_band(hu, BLOOD_HU)
    per_slice_brain = brain.sum(axis=(1, 2))
    per_slice = dense.sum(axis=(1, 2)) / np.maximum(per_slice_brain, 1)
    total = float(dense.sum() / max(int(per_slice_brain.sum()), 1))
    return total, per_slice.astype(np.float64)


@dataclass
class IntensityBaseline:
    """Per-label one-feature logistic regressions on the hyperdense fraction's rank.

    The feature enters as its rank among the training values (the empirical CDF, ties at
    their mid-rank, so in [0, 1]), not standardised. On slices it has a long tail: near the
    vertex and the skull base a slice holds little brain, and bone's partial volume can make
    most of it "hyperdense" (fractions up to 1.0 without any blood). Standardised, those
    few slices decided the slope, which came out *negative* for ``any`` although the
    fraction ranks the training slices with blood above the others (AUC 0.71): the rule then
    scored a slice AUC of 0.29 on test. On ranks every slice weighs the same, so the slope
    follows the ranking. The rule may still learn a negative slope if training says so.

    A label with one class in training gets its smoothed training prevalence
    ``(n_pos + 0.5) / (n + 1)`` as a constant probability.
    """

    models: dict[str, LogisticRegression | float] = field(default_factory=dict)
    reference: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def fit(self, feature: np.ndarray, labels: np.ndarray) -> IntensityBaseline:
        """Fit on training features ``[N]`` and 0/1 labels ``[N, 6]``."""
        f = np.asarray(feature, dtype=np.float64)
        y = np.asarray(labels) > 0.5
        self.reference = np.sort(f)
        z = self._rank(f)[:, None]
        for j, label in enumerate(LABELS):
            n_pos = int(y[:, j].sum())
            if 0 < n_pos < len(f):
                self.models[label] = LogisticRegression().fit(z, y[:, j])
            else:
                self.models[label] = (n_pos + 0.5) / (len(f) + 1.0)
        return self

    def predict_proba(self, feature: np.ndarray) -> np.ndarray:
        """Probabilities ``[N, 6]`` (columns as LABELS) for features ``[N]``."""
        f = np.asarray(feature, dtype=np.float64)
        z = self._rank(f)[:, None]
        out = np.empty((len(f), len(LABELS)))
        for j, label in enumerate(LABELS):
            m = self.models[label]
            out[:, j] = m if isinstance(m, float) else m.predict_proba(z)[:, 1]
        return out

    def _rank(self, f: np.ndarray) -> np.ndarray:
        """Each value's mid-rank among the training values as a share in [0, 1], centred at 0;
        linear between neighbouring training values, so the order of the values is kept
        (values beyond the training range get the extreme rank)."""
        if len(self.reference) == 0:
            return np.zeros_like(f)
        values, first = np.unique(self.reference, return_index=True)
        last = np.append(first[1:], len(self.reference)) - 1
        mid = (first + last) / 2.0 + 0.5
        return np.interp(f, values, mid / len(self.reference)) - 0.5


_MEMO: OrderedDict[tuple, tuple[float, np.ndarray]] = OrderedDict()
_MEMO_SIZE = 4096  # scans; a few hundred bytes each


def scan_hyperdense_fraction(dataset: ScanDataset, patient_id: str) -> tuple[float, np.ndarray]:
    """:func:`hyperdense_fraction` of a patient's resized volume (:meth:`ScanDataset.resized_volume`).

    Remembered in this process per scan file (path, size, modification time), image size and
    cache use, so the runs of one notebook, which all score the rule on the same patients,
    compute it once per scan. A rewritten scan file is read again.
    """
    path = Path(dataset.data.scans[patient_id])
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, dataset.config.img_size,
           dataset.cache_dir is not None)
    if key in _MEMO:
        _MEMO.move_to_end(key)
    else:
        _MEMO[key] = hyperdense_fraction(np.asarray(dataset.resized_volume(patient_id), dtype=np.float32))
        if len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    total, per_slice = _MEMO[key]
    return total, per_slice.copy()


def _scan_features(dataset: ScanDataset) -> tuple[np.ndarray, list[np.ndarray]]:
    """Hyperdense fraction per patient ``[P]`` and per slice (one ``[N_p]`` array each).

    Reads the same cached resized volumes as the model (:meth:`ScanDataset.resized_volume`).
    """
    totals, slices = [], []
    for pid in dataset.patient_ids:
        total, per_slice = scan_hyperdense_fraction(dataset, pid)
        totals.append(total)
        slices.append(per_slice)
    return np.array(totals), slices


def run_intensity_baseline(train: ScanDataset, val: ScanDataset, test: ScanDataset,
                           n_boot: int = 1000, seed: int = 0) -> dict:
    """Fit on ``train``, choose thresholds on ``val``, and score on ``test``.

    Slice-level predictions are scored at the slices the model sees at evaluation
    (:func:`~ichlib.preprocess.sampling.uniform_indices` with the datasets' ``seq_len``).

    The image-level weighted log loss (RSNA's metric) is scored over every slice
    (``"image"``, :func:`~ichlib.training.metrics.image_level_report`).

    Returns:
        ``{"name", "description", "thresholds", "val": {"patient", "slice", "image"},
        "test": {"patient", "slice", "image"}}`` with :func:`~ichlib.training.metrics.score_predictions`
        reports, plus the test predictions under ``"test_probabilities"``.
    """
    parts = {}
    for name, ds in (("train", train), ("val", val), ("test", test)):
        totals, per_slice = _scan_features(ds)
        idx = [uniform_indices(len(f), ds.config.seq_len) for f in per_slice]
        parts[name] = {
            "scan_x": totals,
            "scan_y": np.stack([ds.data.scan_labels(pid) for pid in ds.patient_ids]),
            "all_slice_x": np.concatenate(per_slice),
            "all_slice_y": np.concatenate([ds.data.slice_labels(pid) for pid in ds.patient_ids]),
            "sampled_x": np.stack([f[i] for f, i in zip(per_slice, idx, strict=True)]),
            "sampled_y": np.stack([ds.data.slice_labels(pid)[i]
                                   for pid, i in zip(ds.patient_ids, idx, strict=True)]),
            "indices": np.stack(idx),
            "ids": list(ds.patient_ids),
            "per_slice": per_slice,
            "all_slice_ids": [pid for pid, f in zip(ds.patient_ids, per_slice, strict=True) for _ in f],
        }
    scan_model = IntensityBaseline().fit(parts["train"]["scan_x"], parts["train"]["scan_y"])
    slice_model = IntensityBaseline().fit(parts["train"]["all_slice_x"], parts["train"]["all_slice_y"])

    def predict(part: dict) -> tuple[np.ndarray, np.ndarray]:
        p_scan = scan_model.predict_proba(part["scan_x"])
        b, s = part["sampled_x"].shape
        p_slice = slice_model.predict_proba(part["sampled_x"].ravel()).reshape(b, s, len(LABELS))
        return p_scan, p_slice

    result: dict = {"name": "intensity_baseline", "description": DESCRIPTION}
    val_scan, val_slice = predict(parts["val"])
    thresholds, notes = choose_thresholds(parts["val"]["scan_y"], val_scan)
    y_vs, p_vs, _ = flatten_slices(parts["val"]["sampled_y"], val_slice, parts["val"]["ids"],
                                   parts["val"]["indices"])
    slice_thresholds, _ = choose_thresholds(y_vs, p_vs)
    result["thresholds"] = thresholds
    result["threshold_notes"] = notes
    for name in ("val", "test"):
        part = parts[name]
        p_scan, p_slice = predict(part)
        y_fl, p_fl, groups = flatten_slices(part["sampled_y"], p_slice, part["ids"], part["indices"])
        result[name] = {
            "patient": score_predictions(part["scan_y"], p_scan, thresholds, n_boot=n_boot, seed=seed),
            "slice": score_predictions(y_fl, p_fl, slice_thresholds, groups=groups, n_boot=n_boot,
                                       seed=seed, level="slice"),
        }
        result[name]["image"] = image_level_report(
            part["all_slice_y"], slice_model.predict_proba(part["all_slice_x"]), part["all_slice_ids"],
            {pid: len(f) for pid, f in zip(part["ids"], part["per_slice"], strict=True)},
            n_boot=n_boot if name == "test" else 0, seed=seed)
        if name == "test":
            result["test_probabilities"] = {pid: dict(zip(LABELS, map(float, row), strict=True))
                                            for pid, row in zip(part["ids"], p_scan, strict=True)}
    return result
