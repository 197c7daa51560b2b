"""K-fold cross-validation by patient, and stage 2 on out-of-fold embeddings.

One split of a small dataset gives a test part too small to read: PhysioNet CT-ICH has 75
patients, so a 15% test part holds 11 of them and one or two of each subtype. Its
publications evaluate with 5-fold cross-validation by patient instead, which tests every
patient once. :func:`cross_validate` does that:

- the patients are dealt into ``K`` folds, stratified on every label
  (:func:`~ichlib.preprocess.splits.cv_split`); fold ``k`` is the test part of run ``k``,
  and the patients of the other folds are split into train and validation as usual;
- each fold is an ordinary run folder ``OUT/fold_k/`` (``best.pt``, ``last.pt``,
  ``history.csv``, ``metrics.json``), so every patient gets exactly one out-of-fold
  prediction, from the one model that neither trained nor selected on it;
- ``OUT/cv_metrics.json`` pools the out-of-fold predictions of all folds (patient-level
  AUC per label and mean subtype AUC with bootstrap intervals over patients, the
  patient-level and the image-level weighted log loss), gives each fold's numbers beside
  them, and the intensity baseline pooled the same way.

With ``two_stage``, stage 2 learns from out-of-fold embeddings, as the top RSNA 2019
solutions trained their sequence models: first every fold's stage 1 (the slice CNN) is
trained; then each patient is embedded by the CNN of the fold that tested it, so no
embedding comes from a CNN that trained on its patient; then the sequence model of fold
``k`` is trained on the embeddings of fold ``k``'s training and validation patients (none
made by CNN ``k``) and tested, with CNN ``k``, on fold ``k``'s test patients. Stage 2 thus
reads embeddings of several CNNs; they stay comparable because every fold starts from the
same weights (the same ``seed``), as the RSNA solutions' folds all started from ImageNet's.

A pooled AUC ranks patients scored by ``K`` different models; the per-fold AUCs, and
their spread, are reported beside it.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ichlib.checkpoint import load_checkpoint, model_from_checkpoint
from ichlib.device import resolve_amp, resolve_device
from ichlib.errors import ConfigError, DataError, IchlibError
from ichlib.io.atomic import atomic_write_text
from ichlib.io.folder import is_synthetic
from ichlib.labels import LABELS
from ichlib.preprocess.dataset import ScanDataset
from ichlib.training.config import RESUME_FREE, TrainConfig
from ichlib.training.data import prepare_data
from ichlib.training.distributed import detect_env
from ichlib.training.engine import deterministic_mode, seed_everything
from ichlib.training.evaluation import final_evaluation, json_safe
from ichlib.training.fit import describe_amp, fit
from ichlib.training.log import RunLog
from ichlib.training.metrics import pooled_image_report, score_predictions
from ichlib.training.results import Scores
from ichlib.training.strategies import sequence_stage_on_embeddings
from ichlib.training.two_stage import embed_scans
from ichlib.version import __version__

#: The file with the pooled results, in the cross-validation's folder.
CV_METRICS = "cv_metrics.json"


@dataclass
class CVResult:
    """What :func:`cross_validate` produced.

    Attributes:
        out_dir: The cross-validation's folder.
        metrics: The content of ``cv_metrics.json``.
        fold_dirs: ``OUT/fold_k``, one run folder per fold.
        metrics_path: ``OUT/cv_metrics.json``.
    """

    out_dir: Path
    metrics: dict
    fold_dirs: list[Path]
    metrics_path: Path

    @property
    def pooled(self) -> Scores:
        """The model's pooled out-of-fold patient scores, by attribute
        (``cv.pooled.auc("any")``, ``cv.pooled.mean_subtype_auc``)."""
        return Scores.from_report(self.metrics["pooled"]["patient"])

    @property
    def baseline(self) -> Scores:
        """The intensity rule's pooled out-of-fold patient scores, on the same patients."""
        return Scores.from_report(self.metrics["baseline"]["patient"])


def cross_validate(config: TrainConfig, folds: int | None = None, resume: bool = False,
                   log: RunLog | None = None) -> CVResult:
    """Train and test ``K`` folds by patient; pool their out-of-fold predictions.

    Args:
        config: The settings of every fold (``out_dir`` is the cross-validation's folder;
            fold ``k`` runs in ``out_dir/fold_k``).
        folds: ``K`` (default ``config.folds``).
        resume: Keep every finished fold (its ``metrics.json`` written with the same
            settings) and continue an interrupted one from its ``last.pt``. Without it,
            every fold is trained anew.
        log: Where progress goes (default: a :class:`RunLog` with ``config.progress``).

    Returns:
        :class:`CVResult`; ``cv_metrics.json`` is written atomically.

    Raises:
        ConfigError: Without a number of folds, under ``torchrun``, or when a finished
            fold was made with other settings.
    """
    log = log or RunLog(config.progress)
    if folds is None and config.folds is None:
        raise ConfigError("cross_validate needs a number of folds (folds=K, or config.folds)")
    if detect_env().world_size > 1:
        raise ConfigError("cross-validation runs in one process; start it without torchrun")
    config = dataclasses.replace(config, folds=folds or config.folds, fold=None)
    configs = fold_configs(config)
    start = time.perf_counter()
    log.info(f"{config.folds}-fold cross-validation by patient in {config.out_dir} "
             f"({'two stages, stage 2 on out-of-fold embeddings' if config.two_stage else 'end to end'})")
    extra = _two_stage_folds(configs, resume, log) if config.two_stage else _end_to_end_folds(configs, resume, log)
    metrics = pool_folds(config, [read_fold_metrics(c) for c in configs])
    metrics["timing"] = {"wall_seconds": time.perf_counter() - start, **extra}
    path = Path(config.out_dir) / CV_METRICS
    atomic_write_text(path, json.dumps(json_safe(metrics), indent=2, allow_nan=False))
    return CVResult(out_dir=Path(config.out_dir), metrics=metrics,
                    fold_dirs=[Path(c.out_dir) for c in configs], metrics_path=path)


def fold_configs(config: TrainConfig) -> list[TrainConfig]:
    """One config per fold: ``fold = k``, run folder ``out_dir/fold_k``."""
    if config.folds is None:
        raise ConfigError("fold_configs needs config.folds")
    return [dataclasses.replace(config, fold=k, out_dir=str(Path(config.out_dir) / f"fold_{k}"))
            for k in range(config.folds)]


def read_fold_metrics(config: TrainConfig) -> dict:
    """The ``metrics.json`` of a fold's run folder.

    Raises:
        DataError: If it is missing or not JSON.
    """
    path = Path(config.out_dir) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DataError(path, "no metrics.json: the fold did not finish") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(path, f"cannot read the fold's metrics ({exc})") from exc


def fold_finished(config: TrainConfig) -> bool:
    """Whether the fold's run folder holds a ``metrics.json`` made with ``config``.

    Raises:
        ConfigError: If it was made with other settings (resume with the same settings,
            or use a new folder).
    """
    path = Path(config.out_dir) / "metrics.json"
    if not path.exists():
        return False
    saved = read_fold_metrics(config).get("config", {})
    differs = [f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in config.to_dict().items()
               if k not in RESUME_FREE and saved.get(k) != v]
    if differs:
        raise ConfigError(f"{path}: this fold was finished with other settings ({'; '.join(differs)}); "
                          "resume with the same settings or use a new out_dir")
    return True


# --- end to end ------------------------------------------------------------------------

def _end_to_end_folds(configs: list[TrainConfig], resume: bool, log: RunLog) -> dict:
    """Each fold is one :func:`~ichlib.training.fit.fit`; finished folds are kept on resume."""
    for cfg in configs:
        if resume and fold_finished(cfg):
            log.info(f"fold {cfg.fold + 1}/{cfg.folds}: finished in {cfg.out_dir}, not trained again")
            continue
        _start_fold(cfg, log)
        fit(cfg, resume=resume, log=log)
    return {}


def _start_fold(cfg: TrainConfig, log: RunLog) -> None:
    """Remove a fold's old ``metrics.json`` before training it again, so that an interrupted
    fold is never taken for a finished one."""
    (Path(cfg.out_dir) / "metrics.json").unlink(missing_ok=True)
    log.info(f"fold {cfg.fold + 1}/{cfg.folds}: {cfg.out_dir}")


# --- two stages, stage 2 out of fold -------------------------------------------------------

def _two_stage_folds(configs: list[TrainConfig], resume: bool, log: RunLog) -> dict:
    """Stage 1 of every fold, then the out-of-fold embeddings, then stage 2 and the test of
    every fold (see the module docstring)."""
    todo = [cfg for cfg in configs if not (resume and fold_finished(cfg))]
    for cfg in configs:
        if cfg in todo:
            _start_fold(cfg, log)
            fit(cfg, resume=resume, log=log, epochs_only=True)
        else:
            log.info(f"fold {cfg.fold + 1}/{cfg.folds}: finished in {cfg.out_dir}, not trained again")
    if not todo:
        return {}
    start = time.perf_counter()
    embeddings, embedded_by = embed_out_of_fold(configs, log)
    embed_seconds = time.perf_counter() - start
    for cfg in todo:
        _sequence_stage_out_of_fold(cfg, embeddings, embedded_by, log)
    return {"out_of_fold_embed_seconds": embed_seconds}


def stage1_checkpoint(config: TrainConfig) -> Path:
    """A fold's stage-1 CNN: ``stage1.pt`` (its best epoch), else ``last.pt``."""
    out = Path(config.out_dir)
    return out / "stage1.pt" if (out / "stage1.pt").exists() else out / "last.pt"


def embed_out_of_fold(configs: list[TrainConfig], log: RunLog) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Every patient's slices embedded by the stage-1 CNN of the fold that tested it.

    Which patients a CNN tested is read from its own checkpoint (``split["test"]``), and
    a patient its CNN trained or selected on is refused.

    Returns:
        ``{patient: [N_slices, F] embeddings}`` and ``{patient: fold whose CNN embedded it}``.

    Raises:
        IchlibError: If the checkpoints' splits do not give each patient one test fold.
    """
    device = resolve_device(configs[0].device)
    amp_dtype = resolve_amp(configs[0].amp, device)
    prepared = prepare_data(configs[0], log=log)  # the data and the cache; its split is not used
    embeddings: dict[str, torch.Tensor] = {}
    embedded_by: dict[str, int] = {}
    for cfg in configs:
        ckpt = load_checkpoint(stage1_checkpoint(cfg))
        split = ckpt["split"]
        tested = list(split["test"])
        clash = [pid for pid in tested if pid in embedded_by or pid in split["train"] + split["val"]]
        if clash:
            raise IchlibError(f"{cfg.out_dir}: patient(s) {', '.join(clash[:5])} are in more than one "
                              "test fold, or in this fold's training data")
        model, _ = model_from_checkpoint(ckpt, device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        dataset = ScanDataset(prepared.data, tested, cfg.preprocess, prepared.cache_dir)
        embeddings.update(embed_scans(model, dataset, device, amp_dtype, log=log))
        embedded_by.update(dict.fromkeys(tested, int(cfg.fold)))
    log.info(f"Embedded {len(embeddings)} patients, each with the CNN of its own test fold.")
    return embeddings, embedded_by


def _sequence_stage_out_of_fold(cfg: TrainConfig, embeddings: dict[str, torch.Tensor],
                                embedded_by: dict[str, int], log: RunLog) -> None:
    """Fold ``k``'s stage 2 on the out-of-fold embeddings of its training and validation
    patients, then its test on fold ``k``; writes ``best.pt`` and ``metrics.json``."""
    out = Path(cfg.out_dir)
    device = resolve_device(cfg.device)
    amp_dtype = resolve_amp(cfg.amp, device)
    with deterministic_mode(cfg.deterministic):
        seed_everything(cfg.seed)
        prepared = prepare_data(cfg, log=log)
        ids = prepared.split["train"] + prepared.split["val"]
        own = [pid for pid in ids if embedded_by.get(pid, cfg.fold) == cfg.fold]
        if own:
            raise IchlibError(f"{out}: no out-of-fold embedding for {', '.join(own[:5])}")
        inputs = {pid: embeddings[pid] for pid in ids}  # fold k's test patients are not even here
        log.info(f"fold {cfg.fold + 1}/{cfg.folds}: stage 2 on out-of-fold embeddings of {len(ids)} patients")
        summary = sequence_stage_on_embeddings(cfg, prepared, stage1_checkpoint(cfg), out / "best.pt",
                                               inputs, device, amp_dtype, log)
        summary.update(inputs="out-of-fold embeddings", embedded_by={pid: embedded_by[pid] for pid in ids})
        data_kind = "synthetic" if is_synthetic(cfg.data_dir) else "real"
        metrics = final_evaluation(cfg, prepared, out / "best.pt", device, data_kind,
                                   _stage1_training(cfg, summary), log=log)
    atomic_write_text(out / "metrics.json", json.dumps(json_safe(metrics), indent=2, allow_nan=False))


def _stage1_training(cfg: TrainConfig, sequence_stage: dict) -> dict:
    """metrics.json's ``training`` for a fold, as :func:`fit` writes it, from ``last.pt``."""
    last = load_checkpoint(Path(cfg.out_dir) / "last.pt")
    history = list(last["history"])
    epoch_seconds = float(sum(row.get("train_seconds", 0.0) for row in history))
    return {**last["early_stopping"], "epochs_run": len(history), "device": describe_amp(cfg),
            "epoch_seconds": epoch_seconds, "sequence_stage": sequence_stage,
            "total_seconds": epoch_seconds + sequence_stage["train_seconds"]}


# --- pooling ---------------------------------------------------------------------------

def pool_folds(config: TrainConfig, fold_metrics: list[dict]) -> dict:
    """``cv_metrics.json``: the folds' out-of-fold test predictions pooled, and each fold's.

    Args:
        config: The cross-validation's settings (``folds`` set).
        fold_metrics: Each fold's ``metrics.json``, in fold order.

    Raises:
        IchlibError: If a patient was tested in two folds.
    """
    fold_of: dict[str, int] = {}
    for k, m in enumerate(fold_metrics):
        for pid in m["test"]["probabilities"]:
            if pid in fold_of:
                raise IchlibError(f"patient {pid} was tested in folds {fold_of[pid]} and {k}")
            fold_of[pid] = k
    ids = sorted(fold_of)
    boot = {"n_boot": config.n_boot, "seed": config.seed}
    model, base, labels = {}, {}, {}
    for m in fold_metrics:
        model.update(m["test"]["probabilities"])
        base.update(m["baseline"]["test_probabilities"])
        labels.update(m["test"]["labels"])
    y = _matrix(labels, ids)
    folds = [_fold_summary(k, m) for k, m in enumerate(fold_metrics)]
    return {
        "data": fold_metrics[0]["data"],
        "note": fold_metrics[0]["note"],
        "ichlib_version": __version__,
        "labels": list(LABELS),
        "protocol": _protocol(config),
        "config": config.to_dict(),
        "n_patients": len(ids),
        "fold_of": {pid: fold_of[pid] for pid in ids},
        "pooled": {"patient": score_predictions(y, _matrix(model, ids), **boot),
                   "image": _pooled_image([m["test"]["image"] for m in fold_metrics], **boot)},
        "baseline": {"name": fold_metrics[0]["baseline"]["name"],
                     "patient": score_predictions(y, _matrix(base, ids), **boot),
                     "image": _pooled_image([m["baseline"]["test"]["image"] for m in fold_metrics], **boot)},
        "folds": folds,
        "across_folds": {name: _spread([f[name]["mean_subtype_auc"] for f in folds])
                         for name in ("model", "baseline")},
        "probabilities": {pid: model[pid] for pid in ids},
        "baseline_probabilities": {pid: base[pid] for pid in ids},
    }


def _protocol(config: TrainConfig) -> dict:
    return {
        "folds": config.folds, "seed": config.seed, "by": "patient (RSNA: person)",
        "stratified_on": list(LABELS), "method": "iterative stratification (Sechidis et al. 2011)",
        "val_fraction_of_non_test": config.val_fraction,
        "two_stage": config.two_stage,
        "stage2_inputs": ("out-of-fold embeddings: each patient embedded by the stage-1 CNN of "
                          "the fold that tested it") if config.two_stage else None,
        "pooled_metrics": "the out-of-fold test predictions of all folds, scored together; "
                          "bootstrap intervals over patients",
    }


def _matrix(rows: dict[str, dict], ids: list[str]) -> np.ndarray:
    return np.array([[float(rows[pid][label]) for label in LABELS] for pid in ids])


def _pooled_image(reports: list[dict], n_boot: int, seed: int) -> dict:
    """The folds' image-level reports pooled exactly (from per-patient loss sums), and the
    prevalence prior pooled by images; n/a when a fold has none."""
    missing = [f"fold {k}: {r.get('note')}" for k, r in enumerate(reports) if not r.get("by_patient")]
    if missing:
        return {"image_weighted_log_loss": None, "ci": None, "note": "n/a: " + "; ".join(missing)}
    pooled = pooled_image_report({pid: v for r in reports for pid, v in r["by_patient"].items()},
                                 n_boot, seed)
    priors = [(r["prevalence_prior"], r["n_images"]) for r in reports]
    if all(value is not None for value, _ in priors):
        pooled["prevalence_prior"] = sum(v * n for v, n in priors) / sum(n for _, n in priors)
    return pooled


def _fold_summary(k: int, metrics: dict) -> dict:
    """One fold's headline numbers (the whole report is in its own metrics.json)."""
    def headline(patient: dict, image: dict) -> dict:
        return {"mean_subtype_auc": patient["mean_subtype_auc"],
                "mean_subtype_auc_ci": patient["mean_subtype_auc_ci"],
                "auc": {label: patient["labels"][label]["auc"] for label in LABELS},
                "n_pos": {label: patient["labels"][label]["n_pos"] for label in LABELS},
                "patient_weighted_log_loss": patient["patient_weighted_log_loss"],
                "image_weighted_log_loss": image.get("image_weighted_log_loss")}

    test, base = metrics["test"], metrics["baseline"]["test"]
    return {"fold": k, "run": f"fold_{k}", "n_patients": metrics["n_patients"],
            "best_epoch": metrics["training"].get("best_epoch"),
            "training_seconds": metrics["training"].get("total_seconds"),
            "model": headline(test["patient"], test["image"]),
            "baseline": headline(base["patient"], base["image"])}


def _spread(values: list[float | None]) -> dict:
    """Mean and standard deviation over the folds where the value is defined."""
    defined = [v for v in values if v is not None]
    return {"values": values, "mean": statistics.fmean(defined) if defined else None,
            "sd": statistics.stdev(defined) if len(defined) > 1 else None}


def format_cv_summary(metrics: dict) -> str:
    """A printable summary of ``cv_metrics.json`` (labelled SYNTHETIC on the phantom)."""
    tag = "SYNTHETIC data" if metrics["data"] == "synthetic" else "real data"
    protocol = metrics["protocol"]
    model, base = metrics["pooled"]["patient"], metrics["baseline"]["patient"]
    model_image, base_image = metrics["pooled"]["image"], metrics["baseline"]["image"]
    how = "two stages, stage 2 on out-of-fold embeddings" if protocol["two_stage"] else "end to end"
    lines = [f"{tag}: {protocol['folds']}-fold cross-validation by patient ({how}); out-of-fold "
             f"predictions for {metrics['n_patients']} patients, 95% intervals over patients",
             f"{'label':<18}{'n_pos':>6}  {'model AUC':<24}{'baseline AUC':<24}"]
    for label in LABELS:
        m, b = model["labels"][label], base["labels"][label]
        lines.append(f"{label:<18}{m['n_pos']:>6}  {_fmt(m['auc'], m['auc_ci']):<24}"
                     f"{_fmt(b['auc'], b['auc_ci']):<24}")
    lines += [
        f"mean subtype AUC: model {_fmt(model['mean_subtype_auc'], model['mean_subtype_auc_ci'])}, "
        f"baseline {_fmt(base['mean_subtype_auc'], base['mean_subtype_auc_ci'])}",
        "patient-level weighted log loss: model "
        f"{_fmt(model['patient_weighted_log_loss'], model['patient_weighted_log_loss_ci'])}, baseline "
        f"{_fmt(base['patient_weighted_log_loss'], base['patient_weighted_log_loss_ci'])}",
        "image-level weighted log loss (RSNA's metric, every slice): model "
        f"{_fmt(model_image['image_weighted_log_loss'], model_image['ci'])}, baseline "
        f"{_fmt(base_image['image_weighted_log_loss'], base_image['ci'])}, prevalence prior "
        f"{_fmt(model_image.get('prevalence_prior'))}",
        "per-fold mean subtype AUC: " + "; ".join(
            f"{name} " + ", ".join(_fmt(v) for v in spread["values"])
            + f" (mean {_fmt(spread['mean'])}, sd {_fmt(spread['sd'])})"
            for name, spread in metrics["across_folds"].items()),
    ]
    if metrics["data"] == "synthetic":
        lines.append(metrics["note"])
    return "\n".join(lines)


def _fmt(value: float | None, ci: list | None = None) -> str:
    text = "n/a" if value is None else f"{value:.3f}"
    return text + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and value is not None else "")
