"""The final evaluation of a run: thresholds on validation, metrics on the held-out test
patients, the intensity baseline on the same patients, all written to ``metrics.json``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ichlib.checkpoint import load_checkpoint, model_from_checkpoint
from ichlib.labels import LABELS
from ichlib.training.baseline import run_intensity_baseline
from ichlib.training.config import TrainConfig
from ichlib.training.data import PreparedData, make_eval_loader
from ichlib.training.distributed import LOCAL, DistContext
from ichlib.training.engine import evaluate
from ichlib.training.log import QUIET, RunLog
from ichlib.training.metrics import (
    choose_thresholds,
    image_level_report,
    prevalence,
    score_predictions,
)
from ichlib.training.strategies import build_criterion
from ichlib.version import __version__


def final_evaluation(config: TrainConfig, prepared: PreparedData, best_path: Path,
                     device: torch.device, data_kind: str,
                     training: dict | None = None, dist: DistContext = LOCAL,
                     log: RunLog = QUIET) -> dict:
    """Evaluate the best checkpoint: thresholds from validation, metrics on test, baseline.

    Always in float32, whatever precision trained the model: the reported numbers and the
    test probabilities must not depend on the CPU's bf16 support, and a float32 pass over
    the validation and test scans is cheap.

    ``training`` (best epoch, early stopping, ...) is recorded as it is. Under ``torchrun``
    rank 0 reads the checkpoint, every rank predicts its share, and all compute the same
    metrics from the gathered predictions.

    Returns:
        The content of ``metrics.json``.
    """
    ckpt = dist.from_main(lambda: load_checkpoint(best_path))
    model, _ = model_from_checkpoint(ckpt, device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_criterion(config, prepared).to(device)
    loaders = {name: make_eval_loader(getattr(prepared, name), config, dist) for name in ("val", "test")}
    val = evaluate(model, criterion, loaders["val"], device, None, log, desc="val", dist=dist)
    test = evaluate(model, criterion, loaders["test"], device, None, log, desc="test", dist=dist)

    thresholds, threshold_notes = choose_thresholds(val.scan_labels, val.scan_probs)
    val_slices = val.slice_rows()
    slice_thresholds, _ = choose_thresholds(val_slices[0], val_slices[1])
    y_sl, p_sl, groups = test.slice_rows()
    boot = {"n_boot": config.n_boot, "seed": config.seed}
    image = image_level_report(y_sl, p_sl, groups, _n_images(prepared, test.patient_ids),
                               _image_prior(prepared), **boot)
    baseline = run_intensity_baseline(prepared.train, prepared.val, prepared.test, **boot)
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
        "val": {"loss": val.loss, "scan_loss": val.scan_loss, "slice_loss": val.slice_loss,
                "patient": score_predictions(val.scan_labels, val.scan_probs, thresholds, n_boot=0)},
        "test": {
            "loss": test.loss, "scan_loss": test.scan_loss, "slice_loss": test.slice_loss,
            "patient": score_predictions(test.scan_labels, test.scan_probs, thresholds, **boot),
            "slice": score_predictions(y_sl, p_sl, slice_thresholds, groups=groups, level="slice", **boot),
            "image": image,
            "probabilities": {pid: dict(zip(LABELS, map(float, row), strict=True))
                              for pid, row in zip(test.patient_ids, test.scan_probs, strict=True)},
            "labels": {pid: dict(zip(LABELS, map(int, row), strict=True))
                       for pid, row in zip(test.patient_ids, test.scan_labels, strict=True)},
        },
        "baseline": baseline,
    }


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
