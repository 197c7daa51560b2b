"""The shortcut audit: what a model could score without looking at the blood.

A CNN trained on slices learns whatever separates the classes most easily. On head CT,
blood sits at mid heights of the head, and the slices at the top and bottom of a scan
(vertex, skull base) almost never show any, so *where a slice is* predicts its label well
without any image content; at patient level, the scan's length can carry the label too.
A model that learned such a shortcut beats chance and still teaches the wrong lesson.

Two one-feature rules measure it, fitted on the training patients like the intensity
baseline (:mod:`ichlib.training.baseline`):

- the **height rule** (slice level): the label's prevalence among training slices at the
  same relative height ``(k + 0.5) / N`` in their scans, in equal-count bins;
- the **length rule** (patient level): the same on the number of slices of the scan.

:func:`band_audit` then scores the model's slice head, the intensity rule and the height
rule only on the slices inside the *blood band*, the range of heights that holds most
training blood slices: there the height says little, so a model that still ranks well
there is using the image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ichlib.labels import LABELS, SUBTYPES
from ichlib.preprocess.dataset import ScanDataset
from ichlib.training.baseline import scan_hyperdense_fraction
from ichlib.training.metrics import (
    bootstrap_auc,
    choose_thresholds,
    percentile_interval,
    roc_auc,
    score_predictions,
)

DESCRIPTION = ("where the slice is, nothing else: per label, the training prevalence at the slice's "
               "relative height in its scan (slice level) and at the scan's number of slices "
               "(patient level), in equal-count bins")
#: Share of the training blood slices the blood band holds (the central interval of their heights).
BAND_COVERAGE = 0.975


def relative_heights(n_slices: int) -> np.ndarray:
    """Relative height ``(k + 0.5) / N`` of each slice ``k`` of a scan of ``N`` slices."""
    return (np.arange(n_slices) + 0.5) / n_slices


@dataclass
class BinnedRule:
    """Per-label prevalence in equal-count bins of one feature, fitted on training rows.

    A bin's probability is its prevalence shrunk towards the overall one by two pseudo-counts,
    so a small bin cannot say 0 or 1. Any shape of dependence is captured (blood at mid
    heights, not only "higher is more").

    Attributes:
        n_bins: Bins (fewer when the feature has fewer distinct values).
        edges: Inner bin edges, after :meth:`fit`.
        table: ``[n_bins, 6]`` probabilities, after :meth:`fit`.
    """

    n_bins: int = 10
    edges: np.ndarray = field(default_factory=lambda: np.array([]))
    table: np.ndarray = field(default_factory=lambda: np.zeros((1, len(LABELS))))

    def fit(self, feature: np.ndarray, labels: np.ndarray) -> BinnedRule:
        """Fit on training features ``[N]`` and 0/1 labels ``[N, 6]``."""
        f = np.asarray(feature, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64) > 0.5
        quantiles = np.quantile(f, np.linspace(0, 1, self.n_bins + 1)[1:-1])
        self.edges = np.unique(quantiles)
        bins = np.searchsorted(self.edges, f, side="right")
        overall = (y.sum(axis=0) + 0.5) / (len(y) + 1.0)
        self.table = np.empty((len(self.edges) + 1, y.shape[1]))
        for b in range(len(self.edges) + 1):
            inside = y[bins == b]
            self.table[b] = (inside.sum(axis=0) + 2.0 * overall) / (len(inside) + 2.0)
        return self

    def predict_proba(self, feature: np.ndarray) -> np.ndarray:
        """Probabilities ``[N, 6]`` for features ``[N]``."""
        return self.table[np.searchsorted(self.edges, np.asarray(feature, dtype=np.float64), side="right")]


def _position_features(ds: ScanDataset) -> dict:
    """Scan lengths, every slice's relative height and the labels of ``ds``."""
    lengths = np.array([len(ds.data.slice_labels(pid)) for pid in ds.patient_ids], dtype=np.float64)
    return {
        "length": lengths,
        "scan_y": np.stack([ds.data.scan_labels(pid) for pid in ds.patient_ids]),
        "height": np.concatenate([relative_heights(int(n)) for n in lengths]),
        "slice_y": np.concatenate([ds.data.slice_labels(pid) for pid in ds.patient_ids]),
        "groups": [pid for pid, n in zip(ds.patient_ids, lengths, strict=True) for _ in range(int(n))],
        "ids": list(ds.patient_ids),
    }


def run_position_baseline(train: ScanDataset, val: ScanDataset, test: ScanDataset,
                          n_boot: int = 1000, seed: int = 0) -> dict:
    """Fit the length and height rules on ``train``, thresholds on ``val``, score on ``test``.

    Slice-level scores are over every slice of each scan.

    Returns:
        ``{"name", "description", "thresholds", "val": {"patient", "slice"},
        "test": {"patient", "slice"}, "test_probabilities"}``, reports from
        :func:`~ichlib.training.metrics.score_predictions`, in the shape of the intensity
        baseline's.
    """
    parts = {name: _position_features(ds) for name, ds in (("train", train), ("val", val), ("test", test))}
    length_rule = BinnedRule(n_bins=5).fit(parts["train"]["length"], parts["train"]["scan_y"])
    height_rule = BinnedRule(n_bins=10).fit(parts["train"]["height"], parts["train"]["slice_y"])
    thresholds, notes = choose_thresholds(parts["val"]["scan_y"], length_rule.predict_proba(parts["val"]["length"]))
    slice_thresholds, _ = choose_thresholds(parts["val"]["slice_y"], height_rule.predict_proba(parts["val"]["height"]))
    result: dict = {"name": "position_baseline", "description": DESCRIPTION, "thresholds": thresholds,
                    "threshold_notes": notes}
    for name in ("val", "test"):
        part = parts[name]
        p_scan = length_rule.predict_proba(part["length"])
        boot = {"n_boot": n_boot if name == "test" else 0, "seed": seed}
        result[name] = {
            "patient": score_predictions(part["scan_y"], p_scan, thresholds, **boot),
            "slice": score_predictions(part["slice_y"], height_rule.predict_proba(part["height"]),
                                       slice_thresholds, groups=part["groups"], level="slice", **boot),
        }
        if name == "test":
            result["test_probabilities"] = {pid: dict(zip(LABELS, map(float, row), strict=True))
                                            for pid, row in zip(part["ids"], p_scan, strict=True)}
    result["height_rule"] = {"edges": height_rule.edges.tolist(), "table": height_rule.table.tolist()}
    return result


def blood_band(train: ScanDataset, coverage: float = BAND_COVERAGE) -> tuple[float, float]:
    """The central range of relative heights that holds ``coverage`` of the training slices
    with blood (``any``)."""
    heights = np.concatenate([relative_heights(len(y))[np.asarray(y)[:, 0] > 0.5]
                              for y in (train.data.slice_labels(pid) for pid in train.patient_ids)])
    if heights.size == 0:
        return 0.0, 1.0
    tail = (1.0 - coverage) / 2.0
    low, high = np.quantile(heights, [tail, 1.0 - tail])
    return float(low), float(high)


@dataclass
class SliceRows:
    """Every slice of a set of scans once, with what each rule and model says of it.

    Attributes:
        patient_ids: ``[M]`` patient of each row.
        heights: ``[M]`` relative heights.
        labels: ``[M, 6]``.
        scores: ``{name: [M, 6]}`` scores of each model or rule.
    """

    patient_ids: list[str]
    heights: np.ndarray
    labels: np.ndarray
    scores: dict[str, np.ndarray]


def slice_rows(patient_ids: Sequence[str], slice_indices: np.ndarray, slice_labels: np.ndarray,
               slice_probs: np.ndarray, dataset: ScanDataset, model: str = "CNN") -> SliceRows:
    """Rows of the slices a model predicted (``[B, S]`` arrays as in
    :class:`~ichlib.training.engine.EvalResult`; repeats counted once), with the
    intensity rule's feature (the slice's hyperdense fraction) beside the model's scores."""
    ids, heights, ys, ps, dense = [], [], [], [], []
    for i, pid in enumerate(patient_ids):
        idx, first = np.unique(np.asarray(slice_indices[i]), return_index=True)
        n = len(dataset.data.slice_labels(pid))
        _, per_slice = scan_hyperdense_fraction(dataset, pid)
        ids += [pid] * len(idx)
        heights.append(relative_heights(n)[idx])
        ys.append(np.asarray(slice_labels[i])[first])
        ps.append(np.asarray(slice_probs[i])[first])
        dense.append(per_slice[idx])
    intensity = np.repeat(np.concatenate(dense)[:, None], len(LABELS), axis=1)
    return SliceRows(ids, np.concatenate(heights), np.concatenate(ys),
                     {model: np.concatenate(ps), "intensity rule": intensity})


def band_audit(rows: SliceRows, band: tuple[float, float], n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Slice AUCs of every score in ``rows``, on all slices and inside ``band`` only.

    Returns:
        One dict per (score, where): ``model``, ``where`` (``"all heights"`` or
        ``"blood band"``), ``n_slices``, ``n_blood``, ``auc_any`` with ``auc_any_ci``, and
        ``mean_subtype_auc`` with its interval (bootstrap over patients).
    """
    inside = (rows.heights >= band[0]) & (rows.heights <= band[1])
    out = []
    for where, keep in (("all heights", np.ones_like(inside)), ("blood band", inside)):
        groups = [pid for pid, k in zip(rows.patient_ids, keep, strict=True) if k]
        y = rows.labels[keep]
        for name, score in rows.scores.items():
            out.append({"model": name, "where": where, "n_slices": int(keep.sum()),
                        "n_blood": int((y[:, 0] > 0.5).sum()),
                        **_auc_summary(y, score[keep], groups, n_boot, seed)})
    return out


def _auc_summary(y: np.ndarray, score: np.ndarray, groups: Sequence[str], n_boot: int, seed: int) -> dict:
    """AUC of ``any`` and mean subtype AUC, each with a 95% bootstrap interval."""
    subtypes = [LABELS.index(s) for s in SUBTYPES if 2 <= (y[:, LABELS.index(s)] > 0.5).sum() <= len(y) - 2]
    aucs = [roc_auc(y[:, j], score[:, j]) for j in range(len(LABELS))]
    summary = {"auc_any": aucs[0], "auc_any_ci": None,
               "mean_subtype_auc": float(np.mean([aucs[j] for j in subtypes])) if subtypes else None,
               "mean_subtype_auc_ci": None}
    if n_boot > 0:
        boot = bootstrap_auc(y, score, groups, n_boot=n_boot, seed=seed)
        summary["auc_any_ci"] = percentile_interval(boot[:, 0])
        if subtypes:
            summary["mean_subtype_auc_ci"] = percentile_interval(boot[:, subtypes].mean(axis=1))
    return summary


def add_height_rule(rows: SliceRows, height_rule: Mapping) -> SliceRows:
    """``rows`` with the fitted height rule's scores (from :func:`run_position_baseline`)."""
    rule = BinnedRule(n_bins=len(height_rule["edges"]) + 1, edges=np.asarray(height_rule["edges"]),
                      table=np.asarray(height_rule["table"]))
    return SliceRows(rows.patient_ids, rows.heights, rows.labels,
                     {**rows.scores, "height rule": rule.predict_proba(rows.heights)})
