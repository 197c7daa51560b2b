"""Evaluation: per-label ROC AUC with patient-bootstrap CIs, RSNA log loss, thresholds.

Label matrices are ``[N, 6]`` with columns as :data:`ichlib.labels.LABELS`; results are
keyed by label name, never by position. A label that has only one class in a split has
no ROC AUC: it is reported as ``None`` with a reason, and left out of the means.

Undefined values are ``None`` (not NaN), so every report is valid JSON as it stands.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from ichlib.errors import ConfigError
from ichlib.labels import LABELS, SUBTYPES

#: RSNA 2019 label weights: 2 for ``any``, 1 for each subtype.
LOG_LOSS_WEIGHTS: dict[str, float] = {label: (2.0 if label == "any" else 1.0) for label in LABELS}
#: Probabilities are clipped to ``[PROB_CLIP, 1 - PROB_CLIP]`` before taking logs.
PROB_CLIP = 1e-7


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """ROC AUC of one label (ties count one half), NaN when only one class is present.

    Equal to ``sklearn.metrics.roc_auc_score`` whenever that is defined.
    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    counts = np.ones((1, y.size))
    return float(_weighted_auc(y, np.asarray(y_score, dtype=np.float64).ravel(), counts)[0])


def one_class_reason(y_true: np.ndarray) -> str | None:
    """Why a label has no AUC in this split (``"only negatives in this split"``), else None."""
    y = np.asarray(y_true).ravel()
    if y.size == 0:
        return "no samples in this split"
    n_pos = int((y > 0.5).sum())
    if n_pos == 0:
        return "only negatives in this split"
    if n_pos == y.size:
        return "only positives in this split"
    return None


def bootstrap_auc(y_true: np.ndarray, y_score: np.ndarray, groups: Sequence | None = None,
                  n_boot: int = 1000, seed: int = 0, chunk: int = 200) -> np.ndarray:
    """Bootstrap replicates of the per-label AUC, resampling patients with replacement.

    Vectorised: each replicate is a vector of patient counts (how often each patient was
    drawn), and the AUC of a replicate is the count-weighted Mann-Whitney statistic, so no
    resampled array is ever built. All labels share the same replicates.

    Args:
        y_true: ``[N, L]`` 0/1 labels (``[N]`` for one label).
        y_score: ``[N, L]`` scores.
        groups: Patient of each row, for slice-level data (all slices of a drawn patient
            come along); None when each row is a patient.
        n_boot: Number of replicates.
        seed: Seed of the resampling.
        chunk: Replicates computed at once (bounds memory to ``chunk * N`` floats).

    Returns:
        ``[n_boot, L]`` AUCs; NaN where a replicate holds only one class of that label.
    """
    y, s = _as_2d(y_true), _as_2d(y_score)
    if y.shape != s.shape:
        raise ConfigError(f"labels {y.shape} and scores {s.shape} differ in shape")
    codes, n_groups = _group_codes(groups, y.shape[0])
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, y.shape[1]))
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        draws = rng.integers(0, n_groups, size=(m, n_groups))
        group_counts = np.bincount((draws + n_groups * np.arange(m)[:, None]).ravel(),
                                   minlength=m * n_groups).reshape(m, n_groups)
        counts = group_counts[:, codes].astype(np.float64)
        for j in range(y.shape[1]):
            out[start:start + m, j] = _weighted_auc(y[:, j], s[:, j], counts)
    return out


def _label_log_loss(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Mean binary log loss of one label, probabilities clipped at :data:`PROB_CLIP`."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.clip(np.asarray(y_prob, dtype=np.float64).ravel(), PROB_CLIP, 1.0 - PROB_CLIP)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def weighted_log_loss(y_true: np.ndarray, y_prob: np.ndarray,
                      weights: Mapping[str, float] = LOG_LOSS_WEIGHTS) -> float:
    """The RSNA 2019 weighted multi-label log loss.

    ``L = sum_l w_l * LL_l / sum_l w_l``, with
    ``LL_l = -(1/N) sum_i [y_il log p_il + (1 - y_il) log(1 - p_il)]`` and ``w = 2`` for
    ``any``, 1 for each subtype. Probabilities are clipped to ``[1e-7, 1 - 1e-7]``
    (:data:`PROB_CLIP`) first, so a confident mistake costs at most ``-log(1e-7) ≈ 16.1``.

    Args:
        y_true: ``[N, 6]`` 0/1 labels, columns as LABELS.
        y_prob: ``[N, 6]`` probabilities.
        weights: Weight per label name.
    """
    y, p = _as_2d(y_true), _as_2d(y_prob)
    if y.shape[1] != len(LABELS):
        raise ConfigError(f"expected {len(LABELS)} label columns ({', '.join(LABELS)}), got {y.shape[1]}")
    w = np.array([weights[label] for label in LABELS], dtype=np.float64)
    per_label = np.array([_label_log_loss(y[:, j], p[:, j]) for j in range(len(LABELS))])
    return float((w * per_label).sum() / w.sum())


def youden_threshold(y_true: np.ndarray, y_prob: np.ndarray) -> float | None:
    """The probability threshold maximising Youden's J = sensitivity + specificity - 1.

    A case is called positive when ``p >= threshold``. Among equal J, the highest
    threshold wins. Returns None when the label has only one class.
    """
    y = np.asarray(y_true, dtype=np.float64).ravel() > 0.5
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    if one_class_reason(y) is not None:
        return None
    fpr, tpr, candidates = roc_curve(y, p, drop_intermediate=False)
    # candidates decrease and start at +inf (nothing called positive, J = 0).
    return float(min(candidates[int(np.argmax(tpr - fpr))], 1.0))


def choose_thresholds(y_true: np.ndarray, y_prob: np.ndarray,
                      default: float = 0.5) -> tuple[dict[str, float], dict[str, str]]:
    """Youden thresholds per label, chosen on validation, to be applied unchanged to test.

    Returns:
        ``{label: threshold}`` and ``{label: note}`` for labels that fell back to
        ``default`` because validation had only one class.
    """
    y, p = _as_2d(y_true), _as_2d(y_prob)
    thresholds, notes = {}, {}
    for j, label in enumerate(LABELS):
        t = youden_threshold(y[:, j], p[:, j])
        if t is None:
            notes[label] = f"threshold {default} by default: {one_class_reason(y[:, j])} (validation)"
            t = default
        thresholds[label] = t
    return thresholds, notes


def sensitivity_specificity(y_true: np.ndarray, y_prob: np.ndarray,
                            threshold: float) -> tuple[float | None, float | None]:
    """Sensitivity and specificity of ``p >= threshold`` (None where undefined)."""
    y = np.asarray(y_true).ravel() > 0.5
    called = np.asarray(y_prob).ravel() >= threshold
    sens = float(called[y].mean()) if y.any() else None
    spec = float((~called[~y]).mean()) if (~y).any() else None
    return sens, spec


def score_predictions(y_true: np.ndarray, y_prob: np.ndarray,
                      thresholds: Mapping[str, float] | None = None,
                      groups: Sequence | None = None, n_boot: int = 1000, seed: int = 0,
                      ci: float = 0.95, level: str = "patient") -> dict:
    """Every metric for one set of predictions, as a JSON-ready dict.

    Args:
        y_true: ``[N, 6]`` 0/1 labels, columns as LABELS.
        y_prob: ``[N, 6]`` probabilities.
        thresholds: Per-label thresholds chosen on validation; sensitivity and
            specificity are reported at them. None skips those two.
        groups: Patient of each row for slice-level data (bootstrap resamples patients).
        n_boot: Bootstrap replicates for the CIs (0 skips the CIs).
        seed: Bootstrap seed.
        ci: Confidence level of the intervals.
        level: ``"patient"`` or ``"slice"``, recorded in the report.

    Returns:
        ``{"level", "n", "n_patients", "n_boot", "ci", "labels": {label: {...}},
        "mean_auc", "mean_subtype_auc", "mean_subtype_auc_ci", "weighted_log_loss"}``;
        per label: ``n_pos``, ``n_neg``, ``auc``, ``auc_ci`` (``[low, high]``), ``note``,
        ``log_loss``, ``threshold``, ``sensitivity``, ``specificity``.
    """
    y, p = _as_2d(y_true), _as_2d(y_prob)
    if y.shape != p.shape or y.shape[1] != len(LABELS):
        raise ConfigError(f"expected labels and probabilities [N, {len(LABELS)}], "
                          f"got {y.shape} and {p.shape}")
    codes, n_patients = _group_codes(groups, y.shape[0])
    boot = bootstrap_auc(y, p, groups, n_boot=n_boot, seed=seed) if n_boot > 0 else None
    alpha = (1.0 - ci) / 2.0
    labels: dict[str, dict] = {}
    for j, label in enumerate(LABELS):
        reason = one_class_reason(y[:, j])
        auc = None if reason else roc_auc(y[:, j], p[:, j])
        auc_ci = None
        if auc is not None and boot is not None:
            auc_ci = _percentile_ci(boot[:, j], alpha)
        entry = {
            "n_pos": int((y[:, j] > 0.5).sum()), "n_neg": int((y[:, j] <= 0.5).sum()),
            "auc": auc, "auc_ci": auc_ci, "note": reason,
            "log_loss": _label_log_loss(y[:, j], p[:, j]) if y.shape[0] else None,
            "threshold": None, "sensitivity": None, "specificity": None,
        }
        if thresholds is not None:
            t = float(thresholds[label])
            entry["threshold"] = t
            entry["sensitivity"], entry["specificity"] = sensitivity_specificity(y[:, j], p[:, j], t)
        labels[label] = entry

    defined = [label for label in LABELS if labels[label]["auc"] is not None]
    defined_sub = [label for label in SUBTYPES if labels[label]["auc"] is not None]
    sub_ci = None
    if boot is not None and defined_sub:
        cols = [LABELS.index(label) for label in defined_sub]
        with warnings.catch_warnings():  # replicates with no subtype defined: mean of nothing
            warnings.simplefilter("ignore", category=RuntimeWarning)
            sub_ci = _percentile_ci(np.nanmean(boot[:, cols], axis=1), alpha)
    return {
        "level": level,
        "n": int(y.shape[0]),
        "n_patients": int(n_patients),
        "n_boot": int(n_boot),
        "ci": ci,
        "labels": labels,
        "mean_auc": _mean([labels[label]["auc"] for label in defined]),
        "mean_auc_labels": defined,
        "mean_subtype_auc": _mean([labels[label]["auc"] for label in defined_sub]),
        "mean_subtype_auc_ci": sub_ci,
        "mean_subtype_auc_labels": defined_sub,
        "weighted_log_loss": weighted_log_loss(y, p) if y.shape[0] else None,
    }


def flatten_slices(slice_labels: np.ndarray, slice_probs: np.ndarray, patient_ids: Sequence[str],
                   slice_indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Flatten ``[B, S, 6]`` slice arrays into rows for slice-level metrics.

    Args:
        slice_labels: ``[B, S, 6]`` labels of the sampled slices.
        slice_probs: ``[B, S, 6]`` predicted probabilities.
        patient_ids: ``[B]`` patient of each scan.
        slice_indices: ``[B, S]`` indices of the sampled slices; when given, a slice that
            was sampled twice (scans shorter than ``S``) is counted once.

    Returns:
        ``y [M, 6]``, ``p [M, 6]`` and the patient of each row (``groups``).
    """
    y = np.asarray(slice_labels, dtype=np.float64)
    p = np.asarray(slice_probs, dtype=np.float64)
    b, s = y.shape[:2]
    keep = np.ones((b, s), dtype=bool)
    if slice_indices is not None:
        idx = np.asarray(slice_indices)
        for i in range(b):
            _, first = np.unique(idx[i], return_index=True)
            keep[i] = False
            keep[i, first] = True
    groups = [pid for pid, row in zip(patient_ids, keep, strict=True) for k in row if k]
    return y[keep], p[keep], groups


def results_table(reports: Mapping[str, dict] | dict, model: str = "model") -> pd.DataFrame:
    """A tidy table, one row per (model, level, label), from :func:`score_predictions` reports.

    Args:
        reports: One report, or ``{model name: report}`` (or ``{name: [reports...]}``) to
            compare models on the same patients.
        model: Name for a single report.

    Returns:
        Columns ``model, level, label, n_pos, n_neg, auc, auc_ci_low, auc_ci_high,
        log_loss, threshold, sensitivity, specificity, note``; labels by name.
    """
    if "labels" in reports:
        reports = {model: reports}
    rows = []
    for name, value in reports.items():
        for report in value if isinstance(value, (list, tuple)) else [value]:
            for label in LABELS:
                entry = report["labels"][label]
                low, high = entry["auc_ci"] if entry["auc_ci"] else (None, None)
                rows.append({
                    "model": name, "level": report["level"], "label": label,
                    "n_pos": entry["n_pos"], "n_neg": entry["n_neg"], "auc": entry["auc"],
                    "auc_ci_low": low, "auc_ci_high": high, "log_loss": entry["log_loss"],
                    "threshold": entry["threshold"], "sensitivity": entry["sensitivity"],
                    "specificity": entry["specificity"], "note": entry["note"],
                })
    table = pd.DataFrame(rows)
    numeric = ["auc", "auc_ci_low", "auc_ci_high", "log_loss", "threshold", "sensitivity", "specificity"]
    table[numeric] = table[numeric].astype(float)
    return table


# --- internals -------------------------------------------------------------------------

def _as_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[:, None] if a.ndim == 1 else a


def _group_codes(groups: Sequence | None, n: int) -> tuple[np.ndarray, int]:
    if groups is None:
        return np.arange(n), n
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ConfigError(f"groups has shape {groups.shape}, expected ({n},)")
    uniques, codes = np.unique(groups, return_inverse=True)
    return codes.ravel(), len(uniques)


def _weighted_auc(y: np.ndarray, s: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUC of one label for each row of ``counts [R, N]`` (the weight of every sample).

    Sorting by score and summing the weights within each run of tied scores gives, per
    tie group, the positive weight ``P_g`` and negative weight ``N_g``; then
    ``AUC = sum_g P_g (N_below_g + N_g / 2) / (sum P * sum N)``.
    """
    if y.size == 0:
        return np.full(counts.shape[0], np.nan)
    order = np.argsort(s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order] > 0.5
    starts = np.flatnonzero(np.r_[True, np.diff(s_sorted) != 0])
    c = counts[:, order]
    pos = np.add.reduceat(c * y_sorted, starts, axis=1)
    neg = np.add.reduceat(c * ~y_sorted, starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    num = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _percentile_ci(values: np.ndarray, alpha: float) -> list[float] | None:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return [float(low), float(high)]


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None

