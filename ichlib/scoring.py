"""Scoring on a labelled folder: RSNA 2019's image-level metric and the patient-level metrics.

Two ways in, both behind ``ichlib evaluate``:

* :func:`evaluate_checkpoint`: a checkpoint predicts every slice of every scan of a labelled
  CT-ICH or RSNA folder (or one part of its run's split), and the predictions are scored.
* :func:`score_submission`: a submission file (:mod:`ichlib.rsna_submission`) is scored
  against an RSNA label table, as Kaggle scored it.

RSNA's metric (:func:`~ichlib.training.metrics.image_weighted_log_loss`): per image
``sum_l w_l * BCE(y_l, p_l) / sum_l w_l`` with ``w = 2`` for ``any`` and 1 per subtype, each
probability clipped to ``[1e-15, 1 - 1e-15]`` (:data:`~ichlib.training.metrics.PROB_CLIP`),
then the mean over every image. It is scored for both per-image sources (the slice head and
the sequence model's per-slice outputs) with bootstrap intervals over patients, beside two
constant predictions: the training prior (the image prevalence of the run's training
patients, when the run's split is known) and this folder's own prevalence (the best
constant, in-sample: a floor for a model that ignores the images). The patient-level
metrics (AUCs with intervals, sensitivity and specificity at the checkpoint's thresholds, the
patient-level weighted log loss, a different number) are those of training
(:func:`~ichlib.training.metrics.score_predictions`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ichlib.checkpoint import load_checkpoint
from ichlib.errors import ConfigError, DataError
from ichlib.io.folder import detect_format, is_synthetic, read_dataset
from ichlib.io.rsna import RSNA_LABEL_CSVS, read_rsna_labels
from ichlib.io.tables import CtIchData
from ichlib.labels import LABELS
from ichlib.predict import PredictionError, Predictor
from ichlib.rsna_submission import (
    DEFAULT_IMAGE_SOURCE,
    IMAGE_SOURCES,
    has_sequence_outputs,
    predict_slices,
    read_submission,
)
from ichlib.training.metrics import (
    LOG_LOSS_WEIGHTS,
    PROB_CLIP,
    bootstrap_mean,
    image_level_report,
    image_weighted_log_loss,
    percentile_interval,
    prevalence,
    row_log_losses,
    score_predictions,
)
from ichlib.version import __version__

#: Which patients ``evaluate_checkpoint`` scores: all, or one part of the run's split.
SPLITS = ("all", "train", "val", "test")
#: How the metric is computed, in words (reports and ``--help``).
METRIC_NOTE = (f"RSNA 2019 weighted log loss over every image: w = 2 for any, 1 per subtype, "
               f"probabilities clipped to [{PROB_CLIP:g}, 1 - {PROB_CLIP:g}]")
_SYNTHETIC_NOTE = ("SYNTHETIC phantom data: these numbers say whether the pipeline works, not how "
                   "well it would detect hemorrhage in patients")


def image_prior(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Per-label image prevalence ``(n_pos + 0.5) / (n + 1)`` of a labelled table or folder.

    Args:
        path: An RSNA label CSV (``stage_2_train.csv``), an RSNA folder, or a CT-ICH folder.

    Returns:
        ``[6]`` prevalence (columns as LABELS) and what it is, in words.

    Raises:
        DataError: If the table or folder cannot be read.
    """
    path = Path(path)
    if path.is_dir() and detect_format(path) == "ct-ich":
        data = read_dataset(path, on_error="skip")
        labels = data.slices[list(LABELS)].to_numpy(dtype=np.float64)
        what = f"image prevalence of {path} ({len(labels)} slices)"
    else:
        table = _label_csv(path)
        labels = read_rsna_labels(table)[0][list(LABELS)].to_numpy(dtype=np.float64)
        what = f"image prevalence of {table} ({len(labels)} images)"
    if not len(labels):
        raise DataError(path, "holds no labelled image to take a prior from")
    return prevalence(labels), what


def _label_csv(path: Path) -> Path:
    """The RSNA label table: ``path`` itself, or the first of RSNA_LABEL_CSVS in it."""
    if path.is_dir():
        found = next((path / n for n in RSNA_LABEL_CSVS if (path / n).is_file()), None)
        if found is None:
            raise DataError(path, f"no RSNA label table ({', '.join(RSNA_LABEL_CSVS)})")
        return found
    return path


# --- a checkpoint on a labelled folder ------------------------------------------------------

@dataclass
class _Rows:
    """Predictions and labels collected over the evaluated patients."""

    patient_ids: list[str] = field(default_factory=list)
    scan_labels: list[np.ndarray] = field(default_factory=list)
    scan_probs: list[np.ndarray] = field(default_factory=list)
    image_labels: list[np.ndarray] = field(default_factory=list)
    image_probs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)


def evaluate_checkpoint(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, split: str = "all",
                        device: str = "auto", amp: str = "auto", n_boot: int = 1000, seed: int = 0,
                        cache_dir: str | os.PathLike | None = None) -> dict:
    """Score a checkpoint on a labelled CT-ICH or RSNA folder (see the module docstring).

    Every slice of every scan is predicted (:func:`~ichlib.rsna_submission.predict_slices`).
    A scan that cannot be read or predicted is reported in ``errors`` and left out; series
    the RSNA reader refuses are in ``problems``.

    Args:
        checkpoint: A checkpoint file (``best.pt`` of a run).
        data_dir: The labelled folder.
        split: ``"all"`` scans of the folder, or ``"train"``, ``"val"`` or ``"test"``: that
            part of the run's split, read from the ``metrics.json`` beside the checkpoint.
        device, amp: As for :class:`~ichlib.predict.Predictor`.
        n_boot, seed: Bootstrap over patients for the intervals (0: none).
        cache_dir: RSNA header cache (default as :func:`~ichlib.io.rsna.read_rsna`).

    Returns:
        A JSON-ready report: ``image`` (per source, with ``difference``), ``references``,
        ``patient``, ``errors``, ``problems`` and what was evaluated.

    Raises:
        ConfigError: On an unknown ``split``.
        DataError: If the folder, the checkpoint or the run's split cannot be used, or no
            scan could be predicted.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    ckpt = load_checkpoint(checkpoint)
    predictor = Predictor(ckpt, device=device, amp=amp, source=checkpoint)
    data = read_dataset(data_dir, on_error="skip",
                        **({"cache_dir": cache_dir} if cache_dir and detect_format(data_dir) == "rsna" else {}))
    patient_ids, train_ids = _patients(data, split, Path(checkpoint))
    rows, errors = _predict_patients(predictor, data, patient_ids)
    if not rows.patient_ids:
        raise DataError(data_dir, f"none of the {len(patient_ids)} scans could be predicted; first: "
                                  f"{errors[0].error if errors else 'none'}")
    thresholds = {k: float(v) for k, v in dict(ckpt.get("thresholds") or {}).items()}
    report = {
        "ichlib_version": __version__, "checkpoint": str(Path(checkpoint).resolve()),
        "data": str(Path(data_dir).resolve()), "format": detect_format(data_dir),
        "data_kind": "synthetic" if is_synthetic(data_dir) else "real",
        "split": split, "n_patients": len(rows.patient_ids), "n_images": len(rows.groups),
        "metric": METRIC_NOTE, "clip": PROB_CLIP, "weights": dict(LOG_LOSS_WEIGHTS),
        "submitted_source": DEFAULT_IMAGE_SOURCE,
        "image": _image_reports(rows, data, n_boot, seed),
        "references": _references(rows, data, train_ids),
        "patient": score_predictions(np.stack(rows.scan_labels), np.stack(rows.scan_probs),
                                     thresholds or None, n_boot=n_boot, seed=seed),
        "errors": [e.to_dict() for e in errors],
        "problems": [str(p) for p in data.problems],
    }
    if report["data_kind"] == "synthetic":
        report["note"] = _SYNTHETIC_NOTE
    return report


def _patients(data: CtIchData, split: str, checkpoint: Path) -> tuple[list[str], list[str] | None]:
    """The patients to score, and the run's training patients (None when unknown)."""
    every = list(data.patients.index)
    if split == "all":
        return every, None
    metrics = checkpoint.parent / "metrics.json"
    if not metrics.is_file():
        raise DataError(metrics, f"not found: --split {split} reads the run's split from the "
                                 "metrics.json beside the checkpoint (use --split all)")
    try:
        parts = json.loads(metrics.read_text(encoding="utf-8")).get("split")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise DataError(metrics, f"cannot read the run's split ({exc})") from exc
    if not isinstance(parts, dict) or not isinstance(parts.get(split), list):
        raise DataError(metrics, f"holds no {split!r} split")
    known = set(every)
    chosen = [str(p) for p in parts[split] if str(p) in known]
    if not chosen:
        raise DataError(data.root, f"none of the {len(parts[split])} patients of the run's {split} "
                                   f"split ({metrics}) is in this folder")
    train = [str(p) for p in parts.get("train", []) if str(p) in known]
    return chosen, train or None


def _predict_patients(predictor: Predictor, data: CtIchData,
                      patient_ids: list[str]) -> tuple[_Rows, list[PredictionError]]:
    """Every slice of each patient's scan, with its labels; a failing scan is an error."""
    rows = _Rows(image_probs={s: [] for s in IMAGE_SOURCES if s == "slice" or has_sequence_outputs(predictor.model)})
    errors: list[PredictionError] = []
    for pid in patient_ids:
        scan = data.scans[pid]
        try:
            out = predict_slices(predictor, scan)
            labels = data.slice_labels(pid)
            if len(labels) != len(out.prediction.slice_numbers):
                raise DataError(scan, f"{len(out.prediction.slice_numbers)} slices read, "
                                      f"{len(labels)} labelled")
        except Exception as exc:  # one scan's failure must not stop the others
            text = str(exc) if str(scan) in str(exc) else f"{scan}: {type(exc).__name__}: {exc}"
            errors.append(PredictionError(str(scan), f"patient {pid}: {' '.join(text.split())}"))
            continue
        rows.patient_ids.append(pid)
        rows.scan_labels.append(data.scan_labels(pid))
        rows.scan_probs.append(np.array([out.prediction.probabilities[label] for label in LABELS]))
        rows.image_labels.append(labels)
        for source in rows.image_probs:
            rows.image_probs[source].append(out.probabilities(source))
        rows.groups += [pid] * len(labels)
    return rows, errors


def _image_reports(rows: _Rows, data: CtIchData, n_boot: int, seed: int) -> dict:
    """RSNA's metric per source with intervals, and the paired difference of the sources."""
    y = np.concatenate(rows.image_labels)
    n_images = {pid: int(data.patients.loc[pid, "n_slices"]) for pid in rows.patient_ids}
    out: dict = {}
    for source, parts in rows.image_probs.items():
        report = image_level_report(y, np.concatenate(parts), rows.groups, n_images, n_boot=n_boot, seed=seed)
        out[source] = {k: v for k, v in report.items() if k not in ("by_patient", "prevalence_prior")}
    if len(rows.image_probs) == len(IMAGE_SOURCES):
        other = next(s for s in IMAGE_SOURCES if s != DEFAULT_IMAGE_SOURCE)
        diff = (row_log_losses(y, np.concatenate(rows.image_probs[other]))
                - row_log_losses(y, np.concatenate(rows.image_probs[DEFAULT_IMAGE_SOURCE])))
        interval = percentile_interval(bootstrap_mean(diff, rows.groups, n_boot, seed)) if n_boot else None
        out["difference"] = {"what": f"{other} - {DEFAULT_IMAGE_SOURCE}", "value": float(diff.mean()),
                             "ci": interval}
    return out


def _references(rows: _Rows, data: CtIchData, train_ids: list[str] | None) -> dict:
    """RSNA's metric of two constant predictions on the same images."""
    y = np.concatenate(rows.image_labels)
    folder = prevalence(y)
    out = {"folder_prevalence": {"prior": dict(zip(LABELS, folder.tolist(), strict=True)),
                                 "image_weighted_log_loss": image_weighted_log_loss(y, np.broadcast_to(folder, y.shape))},
           "training_prior": None}
    if train_ids:
        prior = prevalence(np.concatenate([data.slice_labels(pid) for pid in train_ids]))
        out["training_prior"] = {"prior": dict(zip(LABELS, prior.tolist(), strict=True)),
                                 "n_patients": len(train_ids),
                                 "image_weighted_log_loss": image_weighted_log_loss(y, np.broadcast_to(prior, y.shape))}
    return out


# --- a submission file ----------------------------------------------------------------------

def score_submission(submission: str | os.PathLike, labels: str | os.PathLike) -> dict:
    """Score a submission file against an RSNA label table, as Kaggle did (no interval:
    the file does not say which images share a series).

    Args:
        submission: The ``ID,Label`` file.
        labels: ``stage_2_train.csv`` or the RSNA folder holding it.

    Returns:
        ``{"image_weighted_log_loss", "n_images", "labels": {label: {"log_loss", "auc"}},
        "references", "metric", ...}``; images whose labels the table contradicts (see
        :func:`~ichlib.io.rsna.read_rsna_labels`) are left out and counted in ``excluded``.

    Raises:
        DataError: If either file is unreadable, the submission names an image the table
            does not have, or lacks a labelled image.
    """
    table = _label_csv(Path(labels))
    sub = read_submission(submission)
    truth, bad, _ = read_rsna_labels(table)
    unknown = sub.index.difference(truth.index.union(list(bad)))
    if len(unknown):
        raise DataError(submission, f"{len(unknown)} image(s) are not in {table} (e.g. "
                                    f"{', '.join(unknown[:3])})")
    missing = truth.index.difference(sub.index)
    if len(missing):
        raise DataError(submission, f"{len(missing)} of the {len(truth)} labelled images of {table} "
                                    f"have no rows (e.g. {', '.join(missing[:3])})")
    y = truth[list(LABELS)].to_numpy(dtype=np.float64)
    p = sub.loc[truth.index, list(LABELS)].to_numpy(dtype=np.float64)
    per_label = score_predictions(y, p, n_boot=0, level="image")["labels"]
    folder = prevalence(y)
    return {
        "submission": str(Path(submission).resolve()), "labels_csv": str(table.resolve()),
        "data_kind": "synthetic" if is_synthetic(table.parent) else "real",
        "metric": METRIC_NOTE, "clip": PROB_CLIP, "weights": dict(LOG_LOSS_WEIGHTS),
        "image_weighted_log_loss": image_weighted_log_loss(y, p), "n_images": len(y),
        "excluded": len(bad),
        "labels": {lab: {"log_loss": per_label[lab]["log_loss"], "auc": per_label[lab]["auc"]} for lab in LABELS},
        "references": {"folder_prevalence": {
            "prior": dict(zip(LABELS, folder.tolist(), strict=True)),
            "image_weighted_log_loss": image_weighted_log_loss(y, np.broadcast_to(folder, y.shape))}},
    }


# --- text -----------------------------------------------------------------------------------

_SOURCE_NAMES = {"slice": "slice head", "sequence": "sequence per-slice outputs"}


def _fmt(value: float | None, ci: list[float] | None = None, digits: int = 4) -> str:
    text = "n/a" if value is None else f"{value:.{digits}f}"
    return text + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def format_evaluation(report: dict) -> str:
    """The report of :func:`evaluate_checkpoint` as text."""
    tag = "SYNTHETIC data" if report["data_kind"] == "synthetic" else "real data"
    lines = [f"{tag}: {report['data']} ({report['format']}), split {report['split']}: "
             f"{report['n_patients']} scans, {report['n_images']} images",
             f"{METRIC_NOTE} (95% interval over patients):"]
    for source in IMAGE_SOURCES:
        entry = report["image"].get(source)
        mark = " (submitted)" if source == report["submitted_source"] else ""
        value = _fmt(entry["image_weighted_log_loss"], entry["ci"]) if entry else "n/a (no per-slice outputs)"
        lines.append(f"  {_SOURCE_NAMES[source] + mark:<34} {value}")
    diff = report["image"].get("difference")
    if diff:
        lines.append(f"  {'difference ' + diff['what']:<34} {diff['value']:+.4f}" +
                     (f" [{diff['ci'][0]:+.4f}, {diff['ci'][1]:+.4f}]" if diff["ci"] else ""))
    refs = report["references"]
    if refs["training_prior"]:
        lines.append(f"  {'training prior (constant)':<34} {_fmt(refs['training_prior']['image_weighted_log_loss'])}")
    lines.append(f"  {'this folder prevalence (in-sample)':<34} "
                 f"{_fmt(refs['folder_prevalence']['image_weighted_log_loss'])}")
    lines += _patient_lines(report["patient"])
    left = len(report["errors"]) + len(report["problems"])
    if left:
        lines.append(f"{left} problem(s) found; the scans concerned are left out of these numbers "
                     "(listed on stderr)")
    if report.get("note"):
        lines.append(report["note"])
    return "\n".join(lines)


def _patient_lines(patient: dict) -> list[str]:
    """The patient-level table: AUC with interval, sensitivity and specificity per label."""
    lines = [f"patient level ({patient['n']} scans; 95% intervals; thresholds from validation):",
             f"  {'label':<17} {'AUC [interval]':<24} {'sens':>6} {'spec':>6}"]
    for label in LABELS:
        e = patient["labels"][label]
        auc = _fmt(e["auc"], e["auc_ci"], 3) if e["auc"] is not None else f"n/a ({e['n_pos']} positive)"
        lines.append(f"  {label:<17} {auc:<24} {_fmt(e['sensitivity'], digits=2):>6} "
                     f"{_fmt(e['specificity'], digits=2):>6}")
    lines.append(f"  mean subtype AUC {_fmt(patient['mean_subtype_auc'], patient['mean_subtype_auc_ci'], 3)}; "
                 f"patient-level weighted log loss {_fmt(patient['patient_weighted_log_loss'])} "
                 "(not comparable with RSNA's)")
    return lines


def format_submission_score(report: dict) -> str:
    """The report of :func:`score_submission` as text."""
    tag = "SYNTHETIC data" if report["data_kind"] == "synthetic" else "real data"
    lines = [f"{tag}: {report['submission']} against {report['labels_csv']}: {report['n_images']} images"
             + (f" ({report['excluded']} with contradictory labels left out)" if report["excluded"] else ""),
             f"{METRIC_NOTE}:",
             f"  {'submission':<34} {_fmt(report['image_weighted_log_loss'])}",
             f"  {'this folder prevalence (in-sample)':<34} "
             f"{_fmt(report['references']['folder_prevalence']['image_weighted_log_loss'])}",
             "  per label: " + ", ".join(f"{lab} {_fmt(report['labels'][lab]['log_loss'])}" for lab in LABELS)]
    return "\n".join(lines)
