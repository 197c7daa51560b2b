"""The ``ichlib`` command line: ``check``, ``synth``, ``train``, ``predict``, ``evaluate``.

Each subcommand parses its arguments here and calls one library function, so everything
the command line does is also available from Python. Each subcommand imports what it needs
when it runs (marked ``# lazy: start-up time``), so ``ichlib --help`` does not load PyTorch.

Every option value is checked while the arguments are parsed, before any work starts: a
bad one ends the command at once with one usage line and exit status 2 (see
:data:`EXIT_STATUS`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ichlib.errors import IchlibError
from ichlib.labels import LABELS
from ichlib.version import __version__

if TYPE_CHECKING:
    from ichlib.training.config import TrainConfig

#: The exit statuses of every subcommand (also in ``ichlib --help`` and docs/cli.md).
EXIT_STATUS = """\
exit status:
  0    success
  1    a data or run problem: a bad scan, label table or checkpoint, problems found by
       check, a scan that could not be predicted, a run folder in use, a full or
       read-only disk (one line per problem on stderr)
  2    a usage error: an unknown option or a bad option value; nothing was run
  130  interrupted (Ctrl-C); train says what was saved and that --resume continues
"""

#: Window names ``--windows`` accepts (:data:`ichlib.preprocess.windowing.WINDOWS`; kept here
#: so that ``--help`` does not import PyTorch, and checked against it by the tests).
WINDOW_NAMES = ("brain", "subdural", "soft", "bone")
#: ``--image-source`` values (:data:`ichlib.rsna_submission.IMAGE_SOURCES`; kept here so that
#: ``--help`` does not import PyTorch, and checked against it by the tests).
IMAGE_SOURCES = ("slice", "sequence")
DEFAULT_IMAGE_SOURCE = "slice"
#: The windows ``ichlib train`` uses unless told: the design's, as in notebook 04.
DEFAULT_WINDOWS = "brain,subdural,bone"


# --- option values, checked while parsing ---------------------------------------------------

def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _float_in(low: float, high: float = math.inf, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in ``[low, high]`` (``(low, high]`` if ``low_open``)."""
    if math.isfinite(high):
        allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
    else:
        allowed = f"{'above' if low_open else 'at least'} {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and low <= value <= high) or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value
    return parse


def _writable_dir(text: str) -> str:
    """An argparse type: a folder that exists, or can be created, and can be written."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    parent = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{parent} is a file, so {text} cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write into {parent} (read-only file system or "
                                         "no permission)")
    return text


def _writable_file(text: str) -> str:
    """An argparse type: a file that can be written (not a folder; its folder writable)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    _writable_dir(str(path.parent if str(path.parent) else "."))
    return text


def _windows(text: str) -> str:
    """An argparse type: comma-separated window names."""
    names = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in names if w not in WINDOW_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown window {', '.join(map(repr, unknown)) or '(none)'}; "
                                         f"choose from {', '.join(WINDOW_NAMES)}")
    return ",".join(names)


def _device(text: str) -> str:
    """An argparse type: ``auto`` or a torch device that exists here."""
    if text == "auto":
        return text
    import torch  # only when --device is given (start-up time)

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use auto, cpu, cuda, "
                                         "cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text}: no CUDA device is available here")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: there are only {count} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text}: MPS is not available here")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"device type {device.type!r} is not supported; use auto, "
                                         "cpu, cuda or mps")
    return text


# --- the subcommands ------------------------------------------------------------------------

def _cmd_check(args: argparse.Namespace) -> int:
    from ichlib.io.check import check_dataset  # lazy: start-up time

    report = check_dataset(args.data_dir, deep=not args.quick, format=args.format)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.summary())
    return 0 if report.ok else 1


def _cmd_synth(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.format == "rsna":
        from ichlib.synthetic.rsna import write_synthetic_rsna  # lazy: start-up time

        out = write_synthetic_rsna(args.out_dir, n_patients=args.patients, size=args.size,
                                   seed=args.seed, workers=args.workers)
        what = f"{args.patients} synthetic patients ({args.patients + 1} DICOM series, RSNA layout)"
    else:
        from ichlib.synthetic.writer import write_synthetic_ct_ich  # lazy: start-up time

        out = write_synthetic_ct_ich(args.out_dir, n_patients=args.patients, size=args.size,
                                     seed=args.seed, workers=args.workers)
        what = f"{args.patients} synthetic patients"
    print(f"Wrote {what} ({args.size}x{args.size}) to {out} "
          f"in {time.perf_counter() - start:.1f} s. SYNTHETIC data, not patient data.")
    return 0


#: ``ichlib train`` options passed to TrainConfig under the same name.
_TRAIN_OPTIONS = ("epochs", "batch_size", "img_size", "seq_len", "aux_weight", "backbone", "windows",
                  "seed", "lr", "patience", "amp", "device", "num_workers", "cache_dir", "n_boot",
                  "sequence_epochs", "sequence_patience", "sequence_members", "pos_weight", "deterministic", "two_stage", "skip_bad", "folds",
                  "pooling", "warmup_epochs", "init_from", "matched_fraction", "encoder_lr_scale")


def _cmd_train(args: argparse.Namespace) -> int:
    from ichlib.training.config import TrainConfig  # lazy: start-up time
    from ichlib.training.distributed import is_main_process  # lazy: start-up time
    from ichlib.training.fit import describe_amp, fit  # lazy: start-up time

    config = TrainConfig(data_dir=args.data, out_dir=args.out,
                         **{name: getattr(args, name) for name in _TRAIN_OPTIONS})
    if config.folds is not None:
        return _cross_validate(config, args.resume)
    main_process = is_main_process()  # under torchrun only rank 0 reports
    if main_process:
        print(f"Training on {describe_amp(config)}; run folder {config.out_dir}", flush=True)
    result = fit(config, resume=args.resume, existing="clear" if args.overwrite else "refuse")
    if main_process:
        _print_train_result(result)
    return 0


def _print_train_result(result) -> None:
    """The run's summary: skipped patients (stderr), the AUC table, the files written."""
    from ichlib.training.metrics import results_table  # lazy: start-up time

    m = result.metrics
    test = m["test"]["patient"]
    base = m["baseline"]["test"]["patient"]
    tag = "SYNTHETIC data" if m["data"] == "synthetic" else "real data"
    for item in m["skipped"]:
        print(f"skipped patient {item['patient_id']}: {item['path']}: {item['problem']}", file=sys.stderr)
    run = m["training"]
    print(f"\n{tag}: best epoch {run['best_epoch']} of {run['epochs_run']} (by validation "
          f"{run['monitor']}); test on {m['n_patients']['test']} patients")
    columns = {"model": test, "baseline": base}
    table = results_table(columns)
    wide = table.pivot(index="label", columns="model", values="auc").reindex(list(test["labels"]))
    wide = wide[list(columns)]
    print(wide.to_string(float_format=lambda v: f"{v:.3f}", na_rep="n/a"))

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    print(f"mean subtype AUC: model {fmt(test['mean_subtype_auc'])}, baseline "
          f"{fmt(base['mean_subtype_auc'])}; patient-level weighted log loss: model "
          f"{fmt(test['patient_weighted_log_loss'])}, baseline {fmt(base['patient_weighted_log_loss'])}")
    print(f"wrote {result.best_path}, {result.last_path}, {result.history_path}, {result.metrics_path}")


def _cross_validate(config: TrainConfig, resume: bool) -> int:
    """``ichlib train --folds K``: the folds in OUT/fold_k, the pooled results in OUT/cv_metrics.json."""
    from ichlib.training.cv import cross_validate, format_cv_summary  # lazy: start-up time
    from ichlib.training.fit import describe_amp  # lazy: start-up time

    print(f"Cross-validating on {describe_amp(config)}; folder {config.out_dir}", flush=True)
    result = cross_validate(config, resume=resume)
    print("\n" + format_cv_summary(result.metrics))
    print(f"wrote {result.metrics_path} and the fold runs {', '.join(str(d) for d in result.fold_dirs)}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    # Mistakes in the paths are refused before PyTorch is imported (seconds): a checkpoint
    # that is missing, a folder or another kind of file ends the command; a missing scan is
    # reported at once and the others are still predicted.
    from ichlib.io.sniff import check_checkpoint_file  # lazy: start-up time

    check_checkpoint_file(args.checkpoint)
    missing = [scan for scan in args.scans if not os.path.lexists(scan)]
    for scan in missing:
        print(f"ichlib predict: error: {scan}: scan not found", file=sys.stderr, flush=True)
    scans = [scan for scan in args.scans if scan not in missing]
    if not scans:
        return 1
    if args.rsna_csv:
        return _predict_rsna_csv(args, scans, bool(missing))

    from ichlib.checkpoint import load_checkpoint  # lazy: start-up time
    from ichlib.predict import (  # lazy: start-up time
        PredictionError,
        format_prediction,
        predict_files,
        scan_paths,
    )

    checkpoint = load_checkpoint(args.checkpoint)
    predictions, errors = predict_files(checkpoint, scan_paths(scans), device=args.device,
                                        amp="off" if args.fp32 else "auto", source=args.checkpoint)
    cams, cam_errors = _write_cams(args, checkpoint, predictions) if args.cam else ({}, [])
    if args.json:
        not_found = [PredictionError(scan, f"{scan}: scan not found") for scan in missing]
        print(json.dumps(_predict_json(args, checkpoint, predictions, not_found + errors, cams,
                                       cam_errors), indent=2, allow_nan=False))
    else:
        for prediction in predictions:
            print(format_prediction(prediction, slices=args.slices) + "\n")
    for error in errors:
        print(f"ichlib predict: error: {error.error}", file=sys.stderr)
    for path, message in cam_errors:
        print(f"ichlib predict: error: Grad-CAM for {path}: {message}", file=sys.stderr)
    return 1 if missing or errors or cam_errors else 0


def _predict_rsna_csv(args: argparse.Namespace, inputs: list[str], missing: bool) -> int:
    """``predict --rsna-csv``: every image of the RSNA folders or series, one row per image and
    label; images that cannot be predicted get the prior and are listed as errors."""
    from ichlib.predict import Predictor  # lazy: start-up time
    from ichlib.rsna_submission import predict_rsna, write_submission  # lazy: start-up time

    prior, prior_source = None, "given"
    if args.prior_from:
        from ichlib.scoring import image_prior  # lazy: start-up time (imports the metrics)

        prior, prior_source = image_prior(args.prior_from)
    start = time.perf_counter()
    predictor = Predictor(args.checkpoint, device=args.device, amp="off" if args.fp32 else "auto")
    result = predict_rsna(predictor, inputs, image_source=args.image_source or DEFAULT_IMAGE_SOURCE, prior=prior,
                          prior_source=prior_source)
    rows = write_submission(args.rsna_csv, result.probabilities)
    summary = {
        "ichlib_version": __version__, "checkpoint": str(Path(args.checkpoint).resolve()),
        "trained_on": result.trained_on, "submission": str(Path(args.rsna_csv).resolve()),
        "rows": rows, "images": len(result.probabilities), "series": len(result.series),
        "predicted_images": len(result.probabilities) - len(result.fallback),
        "image_source": result.image_source,
        "prior": None if result.prior is None else dict(zip(LABELS, map(float, result.prior), strict=True)),
        "prior_source": result.prior_source, "prior_images": len(result.fallback),
        "seconds": round(time.perf_counter() - start, 2), "errors": [e.to_dict() for e in result.errors],
    }
    if args.json:
        print(json.dumps(summary, indent=2, allow_nan=False))
    else:
        tag = " (model trained on SYNTHETIC data)" if result.trained_on == "synthetic" else ""
        print(f"wrote {rows} rows ({summary['images']} images x 6 labels, {summary['series']} series) "
              f"to {args.rsna_csv} in {summary['seconds']:.1f} s{tag}; per-image probabilities from the "
              f"{'slice head' if result.image_source == 'slice' else 'sequence per-slice outputs'}")
        if result.fallback:
            print(f"{len(result.fallback)} image(s) got the prior ({result.prior_source})")
    for error in result.errors:
        print(f"ichlib predict: error: {error.error}", file=sys.stderr)
    return 1 if missing or result.errors else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.submission:
        from ichlib.scoring import format_submission_score, score_submission  # lazy: start-up time

        report = score_submission(args.submission, args.data)
        print(json.dumps(report, indent=2, allow_nan=False) if args.json else format_submission_score(report))
        return 0
    from ichlib.io.sniff import check_checkpoint_file  # lazy: start-up time
    from ichlib.scoring import evaluate_checkpoint, format_evaluation  # lazy: start-up time

    check_checkpoint_file(args.checkpoint)
    report = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, device=args.device,
                                 amp="off" if args.fp32 else "auto", n_boot=args.n_boot, seed=args.seed)
    print(json.dumps(report, indent=2, allow_nan=False) if args.json else format_evaluation(report))
    for problem in [*report["problems"], *(e["error"] for e in report["errors"])]:
        print(f"ichlib evaluate: error: {problem}", file=sys.stderr)
    return 1 if report["errors"] or report["problems"] else 0


def _predict_json(args: argparse.Namespace, checkpoint: dict, predictions: list, errors: list,
                  cams: dict[str, list[str]], cam_errors: list[tuple[str, str]]) -> dict:
    """``predict --json``: what was run (version, checkpoint, data it was trained on), the
    predictions with their Grad-CAM files, and every error."""
    synthetic = checkpoint.get("data") == "synthetic"
    return {
        "ichlib_version": __version__,
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "trained_on": "synthetic" if synthetic else "real",
        "note": ("SYNTHETIC: the model was trained on the synthetic phantom; not for any "
                 "clinical use") if synthetic else "research code, not a medical device",
        "predictions": [{**p.to_dict(), "cam": cams.get(p.path, [])} for p in predictions],
        "errors": [e.to_dict() for e in errors]
                  + [{"path": path, "error": f"Grad-CAM: {message}"} for path, message in cam_errors],
    }


def _write_cams(args: argparse.Namespace, checkpoint: dict, predictions: list
                ) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """Grad-CAM report per predicted scan (PNG, and NIfTI maps unless --no-cam-nifti).

    Output names are unique per input scan (:func:`ichlib.explain.report.unique_stems`); a scan
    whose report fails is reported and the others still get theirs.

    Returns:
        The files written per scan path, and ``(scan, message)`` per failed scan.
    """
    from ichlib.checkpoint import model_from_checkpoint  # lazy: start-up time
    from ichlib.explain.report import unique_stems, write_cam_report  # lazy: start-up time
    from ichlib.viz.cam import save_cam_montage  # lazy: start-up time

    model, config = model_from_checkpoint(checkpoint, source=args.checkpoint)
    scans = [Path(p.path) for p in predictions if p.path]
    stems = unique_stems(scans)
    written: dict[str, list[str]] = {}
    failed: list[tuple[str, str]] = []
    for scan in scans:
        try:
            paths = write_cam_report(model, config, scan, args.cam, top_k=args.cam_top_k,
                                     figure=save_cam_montage,
                                     save_nifti=not args.no_cam_nifti, label=args.cam_label,
                                     stem=stems[scan], synthetic=checkpoint.get("data") == "synthetic")
        except Exception as exc:  # one scan's failure must not stop the others
            text = str(exc) if isinstance(exc, IchlibError) else f"{type(exc).__name__}: {exc}"
            failed.append((str(scan), " ".join(text.split())))
            continue
        written[str(scan)] = [str(p) for p in paths]
        for path in paths:
            print(f"Grad-CAM: {path}", file=sys.stderr)
    return written, failed


# --- the parser -------------------------------------------------------------------------------

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (not for flags, nor where the help text says it), and
    keeps the epilog's lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="ichlib", formatter_class=_HelpFormatter, epilog=EXIT_STATUS,
        description="ICH detection on head CT with a CNN + BiLSTM (research code; not a medical "
                    "device).")
    parser.add_argument("--version", action="version", version=f"ichlib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=textwrap.fill(description or help_text, 88),
                              formatter_class=_HelpFormatter, epilog=EXIT_STATUS)

    p = command("check", "validate a CT-ICH or RSNA folder and list every problem")
    p.add_argument("data_dir", help="folder in the PhysioNet CT-ICH or RSNA 2019 layout")
    p.add_argument("--format", choices=("auto", "ct-ich", "rsna"), default="auto",
                   help="dataset layout (auto: RSNA if stage_2_train.csv is there, else CT-ICH)")
    p.add_argument("--json", action="store_true", help="print a JSON report (with ok and counts)")
    p.add_argument("--quick", action="store_true", help="headers only; do not read the voxels")
    p.set_defaults(func=_cmd_check)

    p = command("synth", "write the synthetic head-CT phantom (CT-ICH or RSNA layout)",
                "Write a SYNTHETIC head-CT phantom with known hemorrhages (not patient data), in the "
                "PhysioNet CT-ICH layout (NIfTI) or the RSNA 2019 layout (DICOM series).")
    p.add_argument("out_dir", type=_writable_dir, help="folder to write (created if needed)")
    p.add_argument("--patients", type=_int_at_least(1), default=75, help="number of patients")
    p.add_argument("--size", type=_int_at_least(32), default=512, help="in-plane size in pixels")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of everything generated")
    p.add_argument("--workers", type=_int_at_least(1), default=None,
                   help="processes (default: all cores)")
    p.add_argument("--format", choices=("ct-ich", "rsna"), default="ct-ich",
                   help="layout to write: CT-ICH NIfTI or RSNA 2019 DICOM series")
    p.set_defaults(func=_cmd_synth)

    p = command("train", "train the CNN + BiLSTM; writes best.pt, last.pt, history.csv and "
                         "metrics.json")
    p.add_argument("--data", required=True, help="dataset folder (CT-ICH or RSNA layout)")
    p.add_argument("--out", required=True, type=_writable_dir,
                   help="run folder (one run at a time; a folder holding an older run needs "
                        "--resume or --overwrite)")
    p.add_argument("--epochs", type=_int_at_least(1), default=10, help="training epochs")
    p.add_argument("--batch-size", type=_int_at_least(1), default=4,
                   help="scans per optimizer step; under torchrun the global batch, split over "
                        "the processes")
    p.add_argument("--img-size", type=_int_at_least(8), default=256, help="input height and width")
    p.add_argument("--seq-len", type=_int_at_least(1), default=16, help="slices per scan, S")
    p.add_argument("--aux-weight", type=_float_in(0.0, 1.0), default=0.5,
                   help="λ, weight of the slice-level loss, in [0, 1]")
    p.add_argument("--backbone", choices=("resnet18", "resnet34", "resnet50"), default="resnet18",
                   help="the CNN")
    p.add_argument("--windows", type=_windows, default=DEFAULT_WINDOWS,
                   help=f"comma-separated CT windows, one channel each; names: {', '.join(WINDOW_NAMES)}")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of the split and the training")
    p.add_argument("--lr", type=_float_in(0.0, low_open=True), default=1e-3, help="AdamW learning rate")
    p.add_argument("--patience", type=_int_at_least(1), default=None,
                   help="early stopping patience in epochs (default: off)")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto", help="mixed precision")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--num-workers", type=_int_at_least(0), default=0, help="DataLoader worker processes")
    p.add_argument("--cache-dir", type=_writable_dir, default=None,
                   help="resized-volume cache (default: $ICHLIB_CACHE or ~/.cache/ichlib)")
    p.add_argument("--n-boot", type=_int_at_least(0), default=1000,
                   help="bootstrap replicates for the confidence intervals")
    p.add_argument("--pooling", choices=("max", "mean", "attention", "last"), default="max",
                   help="how the BiLSTM's per-slice outputs become the scan's prediction (last: the "
                        "final states, an ablation)")
    p.add_argument("--pos-weight", action="store_true", help="weight positives by training prevalence")
    p.add_argument("--two-stage", action="store_true",
                   help="train the CNN (stage 1), then the BiLSTM on its cached slice embeddings")
    p.add_argument("--sequence-epochs", type=_int_at_least(1), default=150,
                   help="epochs of the two-stage BiLSTM stage")
    p.add_argument("--sequence-patience", type=_int_at_least(1), default=20,
                   help="the two-stage BiLSTM stage stops after this many epochs without a lower "
                        "validation scan loss")
    p.add_argument("--sequence-members", type=_int_at_least(1), default=3,
                   help="BiLSTMs the two-stage stage trains on the same embeddings, each with its "
                        "own seed; the model averages their probabilities")
    p.add_argument("--warmup-epochs", type=_int_at_least(0), default=0,
                   help="the curriculum: train the CNN on the slice task for this many epochs first "
                        "(in OUT/warmup), then --epochs end to end from it; 6 is notebook 04's")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start the CNN and slice head from this checkpoint (e.g. a run's stage1.pt)")
    p.add_argument("--matched-fraction", type=_float_in(0.0, 1.0), default=0.5,
                   help="share of the slice task's non-blood slices drawn at the heights of blood "
                        "slices (0: uniform, which lets the CNN learn the slice's height)")
    p.add_argument("--encoder-lr-scale", type=_float_in(0.0, low_open=True), default=None,
                   help="the CNN's learning rate end to end as a multiple of --lr (default 0.1 when "
                        "warm-started, else 1)")
    p.add_argument("--folds", type=_int_at_least(2), default=None,
                   help="K-fold cross-validation by patient: every patient is tested once, by the "
                        "fold model that did not train on it; runs in OUT/fold_k, pooled results in "
                        "OUT/cv_metrics.json")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last.pt (a finished run is "
                            "evaluated again; with --folds: keep the finished folds)")
    again.add_argument("--overwrite", action="store_true",
                       help="remove an older run's files from --out and start a new run there")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (with --seed, a CPU run is reproducible bit for bit)")
    p.add_argument("--skip-bad", action="store_true", help="leave out broken patients (listed) "
                                                           "instead of stopping")
    p.set_defaults(func=_cmd_train)

    p = command("predict", "predict scans with a checkpoint (a bad scan is reported; the others are "
                           "still predicted)")
    p.add_argument("--checkpoint", required=True, help="best.pt of a run")
    p.add_argument("scans", nargs="+",
                   help="NIfTI scans (.nii, .nii.gz), folders of them, DICOM series folders (one "
                        "series each), or .series manifests; with --rsna-csv: RSNA folders, folders of "
                        "*.dcm files (any number of series) or .series manifests")
    p.add_argument("--json", action="store_true",
                   help="print JSON (with the checkpoint, the ichlib version, the data it was "
                        "trained on, every slice's probabilities and the Grad-CAM files) instead of text")
    p.add_argument("--slices", action="store_true",
                   help="text output: also print the per-slice table (slice head, one row per slice); "
                        "by default only the patient-level table and its validation thresholds")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--fp32", action="store_true", help="plain float32 even where bf16 is fast")
    p.add_argument("--cam", metavar="OUT_DIR", type=_writable_dir,
                   help="also write a Grad-CAM figure per scan (the top-k slices for the top "
                        "predicted label) to OUT_DIR")
    p.add_argument("--cam-label", choices=LABELS, default=None,
                   help="explain this label instead of the most probable one")
    p.add_argument("--cam-top-k", type=_int_at_least(1), default=6, help="slices in the Grad-CAM figure")
    p.add_argument("--no-cam-nifti", action="store_true",
                   help="do not save the maps as a NIfTI aligned with the scan")
    p.add_argument("--rsna-csv", metavar="CSV", type=_writable_file, default=None,
                   help="write an RSNA 2019 submission (ID,Label; six rows per image) for every image "
                        "of the given RSNA folders, DICOM folders or .series manifests")
    p.add_argument("--image-source", choices=IMAGE_SOURCES, default=None,
                   help=f"with --rsna-csv: per-image probabilities from the slice head or the sequence "
                        f"model's per-slice outputs (default {DEFAULT_IMAGE_SOURCE})")
    p.add_argument("--prior-from", metavar="PATH", default=None,
                   help="with --rsna-csv: fill unreadable images with the image prevalence of this "
                        "label table or labelled folder (e.g. stage_2_train.csv; default: the model's "
                        "mean probability over the images it predicted)")
    p.set_defaults(func=_cmd_predict)

    p = command("evaluate", "score a checkpoint (or a submission) on a labelled CT-ICH or RSNA folder "
                            "with RSNA 2019's image-level metric and the patient-level metrics",
                "Score a checkpoint on a labelled CT-ICH or RSNA folder: RSNA 2019's weighted log loss "
                "over every image (w = 2 for any, 1 per subtype, probabilities clipped to "
                "[1e-15, 1 - 1e-15]) for both per-image sources, the same for two constant "
                "predictions, and the patient-level AUCs with bootstrap intervals as in training. "
                "With --submission, score a submission file against the folder's label table.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="best.pt of a run")
    what.add_argument("--submission", metavar="CSV", help="a submission file to score instead")
    p.add_argument("--data", required=True, help="labelled folder (CT-ICH or RSNA layout)")
    p.add_argument("--split", choices=("all", "train", "val", "test"), default="all",
                   help="score every scan, or one part of the run's split (from the metrics.json "
                        "beside the checkpoint)")
    p.add_argument("--n-boot", type=_int_at_least(0), default=1000,
                   help="bootstrap replicates for the intervals")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of the bootstrap")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--fp32", action="store_true", help="plain float32 even where bf16 is fast")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_evaluate)

    return parser


def _check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options that only make sense together (a usage error, exit status 2, otherwise)."""
    if args.command != "predict":
        return
    if args.rsna_csv and args.cam:
        parser.error("predict: --cam cannot be combined with --rsna-csv")
    if args.slices and (args.json or args.rsna_csv):
        parser.error(f"predict: --slices applies to the text output only (not with "
                     f"{'--json, which always holds the slices' if args.json else '--rsna-csv'})")
    alone = [name for name, value in (("--image-source", args.image_source),
                                      ("--prior-from", args.prior_from)) if value]
    if alone and not args.rsna_csv:
        parser.error(f"predict: {' and '.join(alone)} only apply with --rsna-csv")


def _show_warnings_as_lines(command: str) -> None:
    """Warnings on stderr as ``ichlib COMMAND: warning: ...``, one line each (inside
    :func:`main`'s ``warnings.catch_warnings``)."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"ichlib {command}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see :data:`EXIT_STATUS`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_combinations(parser, args)
    with warnings.catch_warnings():
        _show_warnings_as_lines(args.command)
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt as exc:  # fit raises RunInterrupted, saying what was saved
            print(f"ichlib {args.command}: {str(exc) or 'interrupted'}", file=sys.stderr)
            return 130
        except IchlibError as exc:
            print(f"ichlib {args.command}: error: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
