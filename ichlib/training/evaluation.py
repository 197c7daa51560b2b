"""The final evaluation of a run: thresholds on validation, metrics on the held-out test
patients, the intensity baseline on the same patients, all written to ``metrics.json``."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from ichlib.checkpoint import load_checkpoint, model_from_checkpoint
from ichlib.errors import LearningWarning
from ichlib.labels import LABELS
from ichlib.training.baseline import run_intensity_baseline
from ichlib.training.config import TrainConfig
from ichlib.training.data import PreparedData
from ichlib.training.distributed import LOCAL, DistContext, evaluate_split
from ichlib.training.engine import EvalResult, evaluate
from ichlib.training.loaders import make_eval_loader
from ichlib.training.log import QUIET, RunLog
from ichlib.training.metrics import (
    choose_thresholds,
    image_level_report,
    paired_auc_difference,
    prevalence,
    score_predictions,
)
from ichlib.training.shortcuts import (
    add_height_rule,
    band_audit,
    blood_band,
    run_position_baseline,
    slice_rows,
)
from ichlib.training.strategies import build_criterion
from ichlib.version import __version__


def final_evaluation(config: TrainConfig, prepared: PreparedData, best_path: Path,
                     device: torch.device, data_kind: str,
                     training: dict | None = None, dist: DistContext = LOCAL,
                     log: RunLog = QUIET, val_result: EvalResult | None = None) -> dict:
    """Evaluate the best checkpoint: thresholds from validation, metrics on test, baseline.

    Always in float32, so the numbers do not depend on the CPU's bf16 support. ``val_result``:
    the best epoch's own float32 single-process pass over validation (not read again then).
    ``training`` is recorded as it is. Under ``torchrun`` rank 0 reads the checkpoint, every
    rank predicts its share, and all compute the metrics from the gathered predictions.

    Returns:
        The content of ``metrics.json``.
    """
    ckpt = dist.from_main(lambda: load_checkpoint(best_path))
    model, _ = model_from_checkpoint(ckpt, device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_criterion(config, prepared).to(device)
    val = val_result or evaluate_split(dist, model, criterion, prepared.val, config, device, None, log, "val")
    test = evaluate_split(dist, model, criterion, prepared.test, config, device, None, log, "test")

    thresholds, threshold_notes = choose_thresholds(val.scan_labels, val.scan_probs)
    val_slices = val.slice_rows()
    slice_thresholds, _ = choose_thresholds(val_slices[0], val_slices[1])
    y_sl, p_sl, groups = test.slice_rows()
    boot = {"n_boot": config.n_boot, "seed": config.seed}
    image = image_level_report(y_sl, p_sl, groups, _n_images(prepared, test.patient_ids),
                               _image_prior(prepared), **boot)
    baseline = run_intensity_baseline(prepared.train, prepared.val, prepared.test, **boot)
    position = run_position_baseline(prepared.train, prepared.val, prepared.test, **boot)
    val_report = score_predictions(val.scan_labels, val.scan_probs, thresholds, **boot)
    alarms = learning_warnings(val_report, val.scan_probs, thresholds)
    for alarm in alarms:
        log.info(f"WARNING: {alarm}")
        warnings.warn(alarm, LearningWarning, stacklevel=2)
    audit = shortcut_audit(test, prepared, position, **boot)
    synthetic_note = ("SYNTHETIC phantom data: these numbers say whether the pipeline works, "
                      "not how well it would detect hemorrhage in patients.")
    return {
        "data": data_kind,
        "note": synthetic_note if data_kind == "synthetic" else
                "research code on real scans; not a medical device",
        "ichlib_version": __version__,
        "labels": list(LABELS),
        "config": config.to_dict(),
        "split": prepared.split,
        "n_patients": {name: len(ids) for name, ids in prepared.split.items()},
        "skipped": prepared.skipped,
        "training": training or {},
        "evaluation_precision": "float32",
        "thresholds": thresholds,
        "threshold_notes": threshold_notes,
        "slice_thresholds": slice_thresholds,
        "warnings": alarms,
        "val": {"loss": val.loss, "scan_loss": val.scan_loss, "slice_loss": val.slice_loss,
                "patient": val_report},
        "test": {
            "loss": test.loss, "scan_loss": test.scan_loss, "slice_loss": test.slice_loss,
            "patient": score_predictions(test.scan_labels, test.scan_probs, thresholds, **boot),
            "slice": score_predictions(y_sl, p_sl, slice_thresholds, groups=groups, level="slice", **boot),
            "image": image,
            "probabilities": {pid: dict(zip(LABELS, map(float, row), strict=True))
                              for pid, row in zip(test.patient_ids, test.scan_probs, strict=True)},
            "labels": {pid: dict(zip(LABELS, map(int, row), strict=True))
                       for pid, row in zip(test.patient_ids, test.scan_labels, strict=True)},
            "combines": combine_check(test),
        },
        "baseline": baseline,
        "position_baseline": position,
        "comparisons": {
            name: paired_auc_difference(test.scan_labels, test.scan_probs,
                                        _aligned(rule["test_probabilities"], test.patient_ids), **boot)
            for name, rule in (("intensity rule", baseline), ("position rule", position))},
        "shortcut_audit": audit,
    }


def _aligned(probabilities: dict, patient_ids: list[str]) -> np.ndarray:
    """``{pid: {label: p}}`` as ``[N, 6]`` in ``patient_ids`` order."""
    return np.array([[probabilities[pid][label] for label in LABELS] for pid in patient_ids])


def audit_checkpoint(path: str | Path, prepared: PreparedData, config: TrainConfig,
                     n_boot: int = 1000, seed: int = 0, device: torch.device | str = "cpu") -> dict:
    """The shortcut audit (:func:`shortcut_audit`) of any checkpoint's slice head on the test
    split, e.g. a slice stage trained with and without height-matched negatives.

    Returns:
        ``{"band", "rows"}`` as in metrics.json's ``shortcut_audit``.
    """
    device = torch.device(device)
    model, _ = model_from_checkpoint(load_checkpoint(path), device)
    result = evaluate(model, build_criterion(config, prepared).to(device),
                      make_eval_loader(prepared.test, config), device)
    position = run_position_baseline(prepared.train, prepared.val, prepared.test, n_boot=0, seed=seed)
    return shortcut_audit(result, prepared, position, n_boot=n_boot, seed=seed)


def combine_check(result) -> dict:
    """AUC of ``any`` and mean subtype AUC of the scan probabilities combined three ways over
    a scan's samplings: the maximum (what is reported), the mean, and one sampling alone.
    A long scan has more samplings, so a maximum can follow scan length for a model that
    learned little; when the three agree, it does not."""
    out = {}
    for name, probs in {"max": result.scan_probs, **result.other_combines}.items():
        report = score_predictions(result.scan_labels, probs, n_boot=0)
        out[name] = {"auc_any": report["labels"]["any"]["auc"], "mean_subtype_auc": report["mean_subtype_auc"]}
    return out


def shortcut_audit(test, prepared: PreparedData, position: dict, n_boot: int = 1000,
                   seed: int = 0) -> dict:
    """The slice head, the intensity rule and the height rule on the test slices, at all
    heights and inside the blood band of the training slices
    (:mod:`ichlib.training.shortcuts`)."""
    band = blood_band(prepared.train)
    rows = slice_rows(test.patient_ids, test.slice_indices, test.slice_labels, test.slice_probs,
                      prepared.test, model="slice head")
    rows = add_height_rule(rows, position["height_rule"])
    return {"band": list(band), "rows": band_audit(rows, band, n_boot=n_boot, seed=seed)}


def learning_warnings(val_report: dict, val_probs: np.ndarray, thresholds: dict) -> list[str]:
    """The signs that a model learned nothing, on the validation split: an AUC whose
    bootstrap interval lies wholly below 0.5, or one class predicted for every scan
    (at the validation thresholds, or probabilities that do not vary)."""
    alarms = []
    for j, label in enumerate(LABELS):
        entry = val_report["labels"][label]
        if entry["auc_ci"] is not None and entry["auc_ci"][1] < 0.5:
            alarms.append(f"validation AUC of {label} is {entry['auc']:.3f} with its interval "
                          f"{entry['auc_ci'][0]:.2f}-{entry['auc_ci'][1]:.2f} wholly below 0.5: the "
                          "model ranks the scans backwards (a shortcut such as scan length?)")
        p = val_probs[:, j]
        called = p >= thresholds[label]
        if label == "any" and (float(p.std()) < 1e-4 or called.all() or not called.any()):
            alarms.append(f"the model predicts one class of {label} for every validation scan "
                          f"(probabilities {p.min():.3f}-{p.max():.3f}): it has learned nothing yet")
    return alarms


def _n_images(prepared: PreparedData, patient_ids: list[str]) -> dict[str, int]:
    """Images (slices) per patient, from the dataset's table."""
    return {pid: int(prepared.data.patients.loc[pid, "n_slices"]) for pid in patient_ids}


def _image_prior(prepared: PreparedData) -> np.ndarray:
    """Per-label image prevalence of the training patients (the chance prior's prediction)."""
    return prevalence(np.concatenate([prepared.data.slice_labels(pid) for pid in prepared.split["train"]]))


def json_safe(value: object) -> object:
    """Replace NaN and infinities by None (recursively), so the result is strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
