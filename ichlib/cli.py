"""The ``ichlib`` command line: ``check``, ``synth``, ``train``, ``predict``.

Each subcommand parses its arguments here and calls one library function, so everything
the command line does is also available from Python. Each subcommand imports what it needs
when it runs (marked ``# lazy: start-up time``), so ``ichlib --help`` does not load PyTorch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ichlib.errors import IchlibError

if TYPE_CHECKING:
    from ichlib.training.config import TrainConfig


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
        from ichlib.synthetic.phantom import write_synthetic_ct_ich  # lazy: start-up time

        out = write_synthetic_ct_ich(args.out_dir, n_patients=args.patients, size=args.size,
                                     seed=args.seed, workers=args.workers)
        what = f"{args.patients} synthetic patients"
    print(f"Wrote {what} ({args.size}x{args.size}) to {out} "
          f"in {time.perf_counter() - start:.1f} s. SYNTHETIC data, not patient data.")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ichlib.training.config import TrainConfig  # lazy: start-up time
    from ichlib.training.distributed import is_main_process  # lazy: start-up time
    from ichlib.training.fit import describe_amp, fit  # lazy: start-up time
    from ichlib.training.metrics import results_table  # lazy: start-up time

    options = {"epochs": args.epochs, "batch_size": args.batch_size, "img_size": args.img_size,
               "seq_len": args.seq_len, "aux_weight": args.aux_weight, "backbone": args.backbone,
               "windows": args.windows, "seed": args.seed, "lr": args.lr, "patience": args.patience,
               "amp": args.amp, "device": args.device, "num_workers": args.num_workers,
               "cache_dir": args.cache_dir, "n_boot": args.n_boot,
               "sequence_epochs": args.sequence_epochs, "folds": args.folds}
    config = TrainConfig(data_dir=args.data, out_dir=args.out, skip_bad=args.skip_bad,
                         pos_weight=args.pos_weight, deterministic=args.deterministic,
                         two_stage=args.two_stage,
                         **{k: v for k, v in options.items() if v is not None})
    if config.folds is not None:
        return _cross_validate(config, args.resume)
    main_process = is_main_process()  # under torchrun only rank 0 reports
    if main_process:
        print(f"Training on {describe_amp(config)}; run folder {config.out_dir}", flush=True)
    result = fit(config, resume=args.resume)
    if not main_process:
        return 0
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
    return 0


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
    from ichlib.predict import format_prediction, predict_files, scan_paths  # lazy: start-up time

    paths = scan_paths(args.scans)
    predictions, errors = predict_files(args.checkpoint, paths, device=args.device,
                                        amp="off" if args.fp32 else "auto")
    if args.json:
        print(json.dumps({"predictions": [p.to_dict() for p in predictions],
                          "errors": [e.to_dict() for e in errors]}, indent=2))
    else:
        for prediction in predictions:
            print(format_prediction(prediction) + "\n")
    for error in errors:
        print(f"ichlib predict: error: {error.error}", file=sys.stderr)
    if args.cam:
        errors += _write_cams(args, [Path(p.path) for p in predictions if p.path])
    return 1 if errors else 0


def _write_cams(args: argparse.Namespace, scans: list[Path]) -> list[str]:
    """Grad-CAM report per predicted scan (PNG, and NIfTI maps unless --no-cam-nifti)."""
    from ichlib.checkpoint import load_checkpoint, model_from_checkpoint  # lazy: start-up time
    from ichlib.viz.cam import write_cam_report  # lazy: start-up time

    model, config = model_from_checkpoint(load_checkpoint(args.checkpoint))
    failed = []
    for scan in scans:
        try:
            written = write_cam_report(model, config, scan, args.cam, top_k=args.cam_top_k,
                                       save_nifti=not args.no_cam_nifti, label=args.cam_label)
            for path in written:
                print(f"Grad-CAM: {path}", file=sys.stderr)
        except IchlibError as exc:
            print(f"ichlib predict: error: Grad-CAM for {scan}: {exc}", file=sys.stderr)
            failed.append(str(scan))
    return failed


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="ichlib", description="ICH detection on head CT with a CNN + BiLSTM (research code; "
                                   "not a medical device).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate a CT-ICH or RSNA folder and list every problem")
    p.add_argument("data_dir", help="folder in the PhysioNet CT-ICH or RSNA 2019 layout")
    p.add_argument("--format", choices=("auto", "ct-ich", "rsna"), default="auto",
                   help="dataset layout (default auto: RSNA if stage_2_train.csv is there)")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.add_argument("--quick", action="store_true", help="headers only; do not read the voxels")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("synth", help="write the synthetic head-CT phantom (CT-ICH or RSNA layout)")
    p.add_argument("out_dir")
    p.add_argument("--patients", type=int, default=75)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--format", choices=("ct-ich", "rsna"), default="ct-ich",
                   help="layout to write: CT-ICH NIfTI (default) or RSNA 2019 DICOM series")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("train", help="train the CNN + BiLSTM; writes best.pt, last.pt, "
                                     "history.csv and metrics.json")
    p.add_argument("--data", required=True, help="CT-ICH folder")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--epochs", type=int, help="default 10")
    p.add_argument("--batch-size", type=int, help="scans per optimizer step (default 4); under "
                                                  "torchrun the global batch, split over the processes")
    p.add_argument("--img-size", type=int, help="input height and width (default 256)")
    p.add_argument("--seq-len", type=int, help="slices per scan, S (default 16)")
    p.add_argument("--aux-weight", type=float, help="λ, weight of the slice-level loss (default 0.5)")
    p.add_argument("--backbone", choices=("resnet18", "resnet34", "resnet50"), help="default resnet18")
    p.add_argument("--windows", help="comma-separated CT windows, one channel each (default brain)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--patience", type=int, help="early stopping patience in epochs (default: off)")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), help="mixed precision (default auto)")
    p.add_argument("--device", help="auto (default), cpu, cuda, ...")
    p.add_argument("--num-workers", type=int, help="DataLoader workers (default 0)")
    p.add_argument("--cache-dir", help="resized-volume cache (default $ICHLIB_CACHE or ~/.cache/ichlib)")
    p.add_argument("--n-boot", type=int, help="bootstrap replicates for the CIs (default 1000)")
    p.add_argument("--pos-weight", action="store_true", help="weight positives by training prevalence")
    p.add_argument("--two-stage", action="store_true",
                   help="train the CNN (stage 1), then the BiLSTM on its cached slice embeddings")
    p.add_argument("--sequence-epochs", type=int, help="epochs of the two-stage BiLSTM stage (default 150)")
    p.add_argument("--folds", type=int, help="K-fold cross-validation by patient: every patient is "
                                             "tested once, by the fold model that did not train on it; "
                                             "runs in OUT/fold_k, pooled results in OUT/cv_metrics.json")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt "
                                                         "(with --folds: keep the finished folds)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (with --seed, a CPU run is reproducible bit for bit)")
    p.add_argument("--skip-bad", action="store_true", help="leave out broken patients (listed) "
                                                           "instead of stopping")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="predict scans with a checkpoint (a bad scan is reported; "
                                       "the others are still predicted)")
    p.add_argument("--checkpoint", required=True, help="best.pt of a run")
    p.add_argument("scans", nargs="+", help="NIfTI scans (.nii/.nii.gz) or folders of them")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    p.add_argument("--fp32", action="store_true", help="plain float32 even where bf16 is fast")
    p.add_argument("--cam", metavar="OUT_DIR", help="also write a Grad-CAM figure per scan (the top-k "
                                                    "slices for the top predicted label) to OUT_DIR")
    p.add_argument("--cam-label", default=None, help="explain this label instead of the top one")
    p.add_argument("--cam-top-k", type=int, default=6, help="slices in the Grad-CAM figure")
    p.add_argument("--no-cam-nifti", action="store_true",
                   help="do not save the maps as a NIfTI aligned with the scan")
    p.set_defaults(func=_cmd_predict)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except IchlibError as exc:
        print(f"ichlib {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
