"""Evaluation: per-label ROC AUC with patient-bootstrap CIs, weighted log losses, thresholds.

Label matrices are ``[N, 6]`` with columns as :data:`ichlib.labels.LABELS`; results are
keyed by label name, never by position. A label with fewer than
:data:`MIN_CLASS_COUNT` (2) positives or negatives in a split has no ROC AUC worth
reading (with one positive the AUC is the rank of one case, and every bootstrap interval
is degenerate): it is reported as ``None`` with a reason, and left out of the means.

Two weighted log losses, named for what they average over:

- :func:`image_weighted_log_loss`: RSNA 2019's metric, over every image (slice) of every
  scan. The only one comparable with the leaderboard (Burduja et al.: 0.04989).
- the patient-level one (``patient_weighted_log_loss`` in reports): the same weights over
  one row per patient. A different number; never put it beside RSNA's.

Undefined values are ``None`` (not NaN), so every report is valid JSON as it stands.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from ichlib.errors import ConfigError
from ichlib.labels import LABELS, SUBTYPES
from ichlib.training.results import Scores

#: RSNA 2019 label weights: 2 for ``any``, 1 for each subtype.
LOG_LOSS_WEIGHTS: dict[str, float] = {label: (2.0 if label == "any" else 1.0) for label in LABELS}
#: Probabilities are clipped to ``[PROB_CLIP, 1 - PROB_CLIP]`` before taking logs (RSNA's clip).
PROB_CLIP = 1e-15
#: Fewest positives and negatives of a label for its AUC and bootstrap interval.
MIN_CLASS_COUNT = 2


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


def too_few_reason(y_true: np.ndarray, minimum: int = MIN_CLASS_COUNT) -> str | None:
    """Why a label gets no AUC here: one class only, or fewer than ``minimum`` positives or
    negatives (``"n/a: 1 positive in this split; ..."``); None when it has enough of both."""
    reason = one_class_reason(y_true)
    if reason is not None:
        return reason
    y = np.asarray(y_true).ravel() > 0.5
    counts = {"positive": int(y.sum()), "negative": int((~y).sum())}
    short = [f"{n} {kind}" for kind, n in counts.items() if n < minimum]
    if not short:
        return None
    return (f"n/a: {' and '.join(short)} in this split; an AUC and its bootstrap interval need "
            f"at least {minimum} positives and {minimum} negatives")


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
    out = np.empty((n_boot, y.shape[1]))
    for start, group_counts in _resampled_counts(n_groups, n_boot, seed, chunk):
        counts = group_counts[:, codes].astype(np.float64)
        for j in range(y.shape[1]):
            out[start:start + len(counts), j] = _weighted_auc(y[:, j], s[:, j], counts)
    return out


def bootstrap_mean(values: np.ndarray, groups: Sequence | None = None, n_boot: int = 1000,
                   seed: int = 0, chunk: int = 200) -> np.ndarray:
    """Bootstrap replicates of the mean of per-row ``values``, resampling groups (patients).

    Uses the same draws as :func:`bootstrap_auc` for the same ``groups``, ``n_boot`` and
    ``seed``, so the replicates of an AUC and of a log loss come from the same resamples.

    Returns:
        ``[n_boot]`` means over the rows of the drawn groups (a drawn group's rows count
        as often as it was drawn).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    codes, n_groups = _group_codes(groups, v.size)
    sums = np.bincount(codes, weights=v, minlength=n_groups)
    sizes = np.bincount(codes, minlength=n_groups).astype(np.float64)
    return _bootstrap_ratio(sums, sizes, n_boot, seed, chunk)


def _bootstrap_ratio(sums: np.ndarray, sizes: np.ndarray, n_boot: int, seed: int,
                     chunk: int = 200) -> np.ndarray:
    """Replicates of ``sum(sums) / sum(sizes)`` with the groups drawn with replacement."""
    out = np.empty(n_boot)
    for start, group_counts in _resampled_counts(len(sums), n_boot, seed, chunk):
        out[start:start + len(group_counts)] = (group_counts @ sums) / (group_counts @ sizes)
    return out


def _bce(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """Elementwise binary cross-entropy, probabilities clipped at :data:`PROB_CLIP`."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.clip(np.asarray(y_prob, dtype=np.float64), PROB_CLIP, 1.0 - PROB_CLIP)
    return -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))


def _label_log_loss(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Mean binary log loss of one label, probabilities clipped at :data:`PROB_CLIP`."""
    return float(np.mean(_bce(np.ravel(y_true), np.ravel(y_prob))))


def row_log_losses(y_true: np.ndarray, y_prob: np.ndarray,
                   weights: Mapping[str, float] = LOG_LOSS_WEIGHTS) -> np.ndarray:
    """Per row, ``sum_l w_l * BCE(y_l, p_l) / sum_l w_l``: ``[N]``.

    Args:
        y_true: ``[N, 6]`` 0/1 labels, columns as LABELS.
        y_prob: ``[N, 6]`` probabilities (clipped to ``[1e-15, 1 - 1e-15]``).
        weights: Weight per label name (RSNA: 2 for ``any``, 1 per subtype).
    """
    y, p = _as_2d(y_true), _as_2d(y_prob)
    if y.shape[1] != len(LABELS) or y.shape != p.shape:
        raise ConfigError(f"expected labels and probabilities [N, {len(LABELS)}] "
                          f"({', '.join(LABELS)}), got {y.shape} and {p.shape}")
    w = np.array([weights[label] for label in LABELS], dtype=np.float64)
    return (_bce(y, p) @ w) / w.sum()


def weighted_log_loss(y_true: np.ndarray, y_prob: np.ndarray,
                      weights: Mapping[str, float] = LOG_LOSS_WEIGHTS) -> float:
    """The RSNA 2019 weighting over whatever rows it is given: the mean of
    :func:`row_log_losses`.

    This equals ``sum_l w_l * LL_l / sum_l w_l`` with ``LL_l`` the mean BCE of label ``l``.
    Over one row per patient it is the *patient-level* weighted log loss; over every image
    it is RSNA's metric (:func:`image_weighted_log_loss`). A confident mistake costs at most
    ``-log(1e-15) ≈ 34.5``.

    Args:
        y_true: ``[N, 6]`` 0/1 labels, columns as LABELS.
        y_prob: ``[N, 6]`` probabilities.
        weights: Weight per label name.
    """
    return float(np.mean(row_log_losses(y_true, y_prob, weights)))


def image_weighted_log_loss(slice_labels: np.ndarray, slice_probs: np.ndarray) -> float:
    """RSNA 2019's score: the weighted multi-label log loss over every image (slice).

    Per image ``sum_l w_l * BCE(y_l, p_l) / sum_l w_l`` with ``w = 2`` for ``any`` and 1
    per subtype, probabilities clipped to ``[1e-15, 1 - 1e-15]``; then the mean over
    images. Pass **every** slice of every scan (one row each), not a sample of them.

    Args:
        slice_labels: ``[M, 6]`` 0/1 labels of the images, columns as LABELS.
        slice_probs: ``[M, 6]`` probabilities.
    """
    return weighted_log_loss(slice_labels, slice_probs)


def log_loss_report(y_true: np.ndarray, y_prob: np.ndarray, groups: Sequence | None = None,
                    n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """A weighted log loss with a bootstrap interval over patients.

    Args:
        y_true, y_prob: ``[N, 6]`` rows (patients, or images with ``groups``).
        groups: Patient of each row; the bootstrap draws patients with all their rows.
        n_boot: Replicates (0: no interval).
        seed: Bootstrap seed (same draws as :func:`bootstrap_auc`).
        ci: Confidence level.

    Returns:
        ``{"value", "ci", "n_rows", "n_patients", "n_boot"}``; ``value`` None when there
        are no rows.
    """
    losses = row_log_losses(y_true, y_prob) if np.size(y_true) else np.zeros(0)
    _, n_patients = _group_codes(groups, losses.size)
    out = {"value": float(losses.mean()) if losses.size else None, "ci": None,
           "n_rows": int(losses.size), "n_patients": int(n_patients), "n_boot": int(n_boot)}
    if n_boot > 0 and losses.size:
        out["ci"] = _percentile_ci(bootstrap_mean(losses, groups, n_boot, seed), (1.0 - ci) / 2.0)
    return out


def image_level_report(slice_labels: np.ndarray, slice_probs: np.ndarray, groups: Sequence[str],
                       n_images: Mapping[str, int], prior: np.ndarray | None = None,
                       n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """RSNA's image-level weighted log loss of one split, if the rows are every image.

    Args:
        slice_labels, slice_probs: ``[M, 6]``, one row per predicted image (slice).
        groups: ``[M]`` patient of each row.
        n_images: Images per patient of the split; the loss is reported only when the rows
            cover all of them (predictions at sampled slices are not RSNA's metric).
        prior: ``[6]`` training image prevalence; its loss on the same images is reported
            as ``prevalence_prior`` (what a model that ignores the images scores).
        n_boot, seed, ci: Bootstrap over patients.

    Returns:
        ``{"image_weighted_log_loss", "ci", "n_images", "n_patients", "n_boot",
        "prevalence_prior", "by_patient": {pid: [loss sum, n images]}, "note"}``;
        the value None with a note when the rows do not cover every image.
    """
    y, p = _as_2d(slice_labels), _as_2d(slice_probs)
    ids = np.asarray(groups, dtype=str)
    have = dict(zip(*np.unique(ids, return_counts=True), strict=True))
    expected = int(sum(n_images.values()))
    if set(have) - set(n_images) or any(have.get(pid, 0) != n for pid, n in n_images.items()):
        return {"image_weighted_log_loss": None, "ci": None, "n_images": int(len(ids)),
                "n_patients": len(n_images), "n_boot": int(n_boot), "prevalence_prior": None,
                "by_patient": None,
                "note": f"n/a: the slice predictions cover {len(ids)} of the {expected} images "
                        "(only the sampled slices?); RSNA's image-level loss needs every image"}
    uniques, codes = np.unique(ids, return_inverse=True)
    sums = np.bincount(codes.ravel(), weights=row_log_losses(y, p), minlength=len(uniques))
    by_patient = {str(pid): [float(total), int(n_images[str(pid)])] for pid, total in zip(uniques, sums, strict=True)}
    report = pooled_image_report(by_patient, n_boot, seed, ci)
    if prior is not None:
        report["prevalence_prior"] = weighted_log_loss(y, np.broadcast_to(np.asarray(prior), y.shape))
    return report


def pooled_image_report(by_patient: Mapping[str, Sequence[float]], n_boot: int = 1000, seed: int = 0,
                        ci: float = 0.95) -> dict:
    """The image-level weighted log loss from per-patient ``[loss sum, n images]``, with a
    bootstrap interval over patients: pools folds of a cross-validation exactly.

    Returns:
        As :func:`image_level_report` (``prevalence_prior`` None, ``note`` None).
    """
    ids = sorted(by_patient)
    sums = np.array([by_patient[pid][0] for pid in ids], dtype=np.float64)
    sizes = np.array([by_patient[pid][1] for pid in ids], dtype=np.float64)
    value = float(sums.sum() / sizes.sum()) if sizes.sum() > 0 else None
    interval = None
    if n_boot > 0 and value is not None:
        interval = _percentile_ci(_bootstrap_ratio(sums, sizes, n_boot, seed), (1.0 - ci) / 2.0)
    return {"image_weighted_log_loss": value, "ci": interval, "n_images": int(sizes.sum()),
            "n_patients": len(ids), "n_boot": int(n_boot), "prevalence_prior": None,
            "by_patient": {pid: [float(by_patient[pid][0]), int(by_patient[pid][1])] for pid in ids},
            "note": None}


def prevalence(labels: np.ndarray) -> np.ndarray:
    """Per-label prevalence ``(n_pos + 0.5) / (n + 1)`` of ``[N, 6]`` labels (never 0 or 1)."""
    y = _as_2d(labels) > 0.5
    return (y.sum(axis=0) + 0.5) / (y.shape[0] + 1.0)


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
        level: ``"patient"`` or ``"slice"``: what a row is. Recorded in the report and in
            the name of the log-loss keys.

    Returns:
        ``{"level", "n", "n_patients", "n_boot", "ci", "labels": {label: {...}},
        "mean_auc", "mean_subtype_auc", "mean_subtype_auc_ci",
        "mean_subtype_auc_ci_undefined", "<level>_weighted_log_loss",
        "<level>_weighted_log_loss_ci"}``; per label: ``n_pos``, ``n_neg``, ``auc``,
        ``auc_ci`` (``[low, high]``), ``auc_ci_undefined`` (replicates with one class of
        the label, left out of the interval), ``note`` (why ``auc`` is None), ``log_loss``,
        ``threshold``, ``sensitivity``, ``specificity``.
    """
    y, p = _as_2d(y_true), _as_2d(y_prob)
    if y.shape != p.shape or y.shape[1] != len(LABELS):
        raise ConfigError(f"expected labels and probabilities [N, {len(LABELS)}], "
                          f"got {y.shape} and {p.shape}")
    _, n_patients = _group_codes(groups, y.shape[0])
    boot = bootstrap_auc(y, p, groups, n_boot=n_boot, seed=seed) if n_boot > 0 else None
    alpha = (1.0 - ci) / 2.0
    labels = {label: _label_entry(y[:, j], p[:, j], None if boot is None else boot[:, j], alpha,
                                  None if thresholds is None else float(thresholds[label]))
              for j, label in enumerate(LABELS)}
    defined = [label for label in LABELS if labels[label]["auc"] is not None]
    defined_sub = [label for label in SUBTYPES if labels[label]["auc"] is not None]
    sub_ci, sub_undefined = None, None
    if boot is not None and defined_sub:
        means = boot[:, [LABELS.index(label) for label in defined_sub]].mean(axis=1)
        sub_undefined = int((~np.isfinite(means)).sum())
        sub_ci = _percentile_ci(means, alpha)
    loss = log_loss_report(y, p, groups, n_boot=n_boot, seed=seed, ci=ci)
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
        "mean_subtype_auc_ci_undefined": sub_undefined,
        "mean_subtype_auc_labels": defined_sub,
        f"{level}_weighted_log_loss": loss["value"],
        f"{level}_weighted_log_loss_ci": loss["ci"],
    }


def _label_entry(y: np.ndarray, p: np.ndarray, boot: np.ndarray | None, alpha: float,
                 threshold: float | None) -> dict:
    """One label's part of :func:`score_predictions` (``boot``: its AUC replicates)."""
    reason = too_few_reason(y)
    auc = None if reason else roc_auc(y, p)
    entry = {
        "n_pos": int((y > 0.5).sum()), "n_neg": int((y <= 0.5).sum()),
        "auc": auc, "auc_ci": None, "auc_ci_undefined": None, "note": reason,
        "log_loss": _label_log_loss(y, p) if y.size else None,
        "threshold": threshold, "sensitivity": None, "specificity": None,
    }
    if boot is not None:
        entry["auc_ci_undefined"] = int((~np.isfinite(boot)).sum())
        if auc is not None:
            entry["auc_ci"] = _percentile_ci(boot, alpha)
    if threshold is not None:
        entry["sensitivity"], entry["specificity"] = sensitivity_specificity(y, p, threshold)
    return entry


def paired_auc_difference(y_true: np.ndarray, p_a: np.ndarray, p_b: np.ndarray,
                          groups: Sequence | None = None, n_boot: int = 1000, seed: int = 0,
                          ci: float = 0.95) -> dict:
    """How much ``p_a`` beats ``p_b`` on the same rows: AUC(a) − AUC(b) with a *paired*
    bootstrap interval (both scored on the same resampled patients in every replicate).

    Two intervals that overlap can still hide a difference that is clearly above 0, and
    two point estimates say nothing about noise; the paired difference says both.

    Args:
        y_true: ``[N, 6]`` labels.
        p_a, p_b: ``[N, 6]`` scores of the two models (or rules).
        groups: Patient of each row for slice-level rows (None: a row is a patient).
        n_boot: Replicates (0: no intervals).
        seed: Resampling seed.
        ci: Confidence level.

    Returns:
        ``{"any": {"difference", "ci"}, "mean_subtype": {"difference", "ci"}, "n_boot"}``;
        a difference is None where the label has too few positives or negatives, and the
        mean is over the subtypes whose AUC is defined.
    """
    y = _as_2d(y_true)
    a, b = _as_2d(p_a), _as_2d(p_b)
    defined = [j for j in range(y.shape[1]) if too_few_reason(y[:, j]) is None]
    diffs = np.array([roc_auc(y[:, j], a[:, j]) - roc_auc(y[:, j], b[:, j]) if j in defined else np.nan
                      for j in range(y.shape[1])])
    subtypes = [j for j in defined if LABELS[j] != "any"]
    alpha = (1.0 - ci) / 2.0
    out = {"any": {"difference": None if 0 not in defined else float(diffs[0]), "ci": None},
           "mean_subtype": {"difference": float(diffs[subtypes].mean()) if subtypes else None, "ci": None},
           "n_boot": int(n_boot)}
    if n_boot > 0 and defined:
        boot = (bootstrap_auc(y, a, groups, n_boot=n_boot, seed=seed)
                - bootstrap_auc(y, b, groups, n_boot=n_boot, seed=seed))
        if 0 in defined:
            out["any"]["ci"] = _percentile_ci(boot[:, 0], alpha)
        if subtypes:
            out["mean_subtype"]["ci"] = _percentile_ci(boot[:, subtypes].mean(axis=1), alpha)
    return out


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


def results_table(reports: Mapping[str, dict | Scores | Sequence[dict | Scores]] | dict | Scores,
                  model: str = "model") -> pd.DataFrame:
    """A tidy table, one row per (model, level, label), from :func:`score_predictions` reports.

    Args:
        reports: One report, or ``{model name: report}`` (or ``{name: [reports...]}``) to
            compare models on the same patients; a report may be its
            :class:`~ichlib.training.results.Scores` view (``run.scores.test``).
        model: Name for a single report.

    Returns:
        Columns ``model, level, label, n_pos, n_neg, auc, auc_ci_low, auc_ci_high,
        log_loss, threshold, sensitivity, specificity, note``; labels by name.
    """
    if isinstance(reports, Scores) or "labels" in reports:
        reports = {model: reports}
    rows = []
    for name, value in reports.items():
        for report in value if isinstance(value, (list, tuple)) else [value]:
            report = report.raw if isinstance(report, Scores) else report
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


def _resampled_counts(n_groups: int, n_boot: int, seed: int,
                      chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(first replicate, [m, n_groups] draw counts)`` per chunk of bootstrap replicates:
    how often each group was drawn when ``n_groups`` are drawn with replacement."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        draws = rng.integers(0, n_groups, size=(m, n_groups))
        yield start, np.bincount((draws + n_groups * np.arange(m)[:, None]).ravel(),
                                 minlength=m * n_groups).reshape(m, n_groups)


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


def percentile_interval(values: np.ndarray, ci: float = 0.95) -> list[float] | None:
    """The ``ci`` percentile interval of bootstrap replicates, undefined (NaN) ones left out."""
    return _percentile_ci(np.asarray(values, dtype=np.float64), (1.0 - ci) / 2.0)


def _percentile_ci(values: np.ndarray, alpha: float) -> list[float] | None:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return [float(low), float(high)]


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None

