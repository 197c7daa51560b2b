"""Prediction latency for one 40-slice 512² scan, from the NIfTI file to probabilities.

The model is a ResNet-18 + BiLSTM checkpoint at the design's preprocessing (256², S = 16,
brain window) with seeded random weights whose BatchNorm statistics are set from the
scan itself, so the probabilities are spread out rather than saturated (an untrained
model: the probabilities mean nothing, their agreement between paths does). Paths:

- reference: nibabel ``get_fdata``, every slice resized and windowed, then each of the
  ``ceil(N / S)`` covering samplings through the whole fp32 eager model with contiguous
  tensors under ``torch.no_grad``, the maximum of their logits (:mod:`_reference`);
- fast: ``ichlib.predict.Predictor`` with its defaults (what ``ichlib predict`` runs): the
  CNN once per slice, the BiLSTM over the samplings in one batch, ``inference_mode``,
  channels_last, bf16 autocast only where it pays (AMX, AVX512-BF16 measured faster, CUDA);
- fast --fp32: the same with ``amp="off"`` (``ichlib predict --fp32``);
- bf16 forced: ``amp="bf16"``, to measure the probability tolerance bf16 costs.

Warm: median of ``--repeats`` calls with the model loaded, after one untimed call, each
path in its own process. Cold: the wall time of a whole process (Python start, imports,
checkpoint load, one prediction): ``python -m ichlib predict --json --fp32`` for the fast
path and this script's ``--cold-reference`` mode for the reference, and ``python -m ichlib
--help`` for start-up alone; each the median of ``--cold-repeats`` processes (default 5).
The cold breakdown times the stages of the same work inside one cold process (this script's
``--cold-breakdown`` mode): imports, checkpoint load, reading the NIfTI, resizing and
windowing, the model; "start" is the rest of the process's wall time (interpreter start, exit).

    python benchmarks/bench_predict.py            # full run
    python benchmarks/bench_predict.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import _common as C

NAME = "predict"
VARIANTS = {"reference": None, "fast": "auto", "fast_fp32": "off", "bf16_forced": "bf16"}
WARM_TARGET_S = 0.5
COLD_TARGET_S = 3.0
HELP_TARGET_S = 1.0
SPEEDUP_TARGET = 2.0


def settings(args: argparse.Namespace) -> dict:
    """Scan and model sizes for a full or a quick run."""
    if args.quick:
        return {"scan_size": 96, "n_slices": 10, "img_size": 64, "seq_len": 4, "windows": "brain",
                "repeats": 2, "cold_repeats": 1}
    return {"scan_size": 512, "n_slices": 40, "img_size": 256, "seq_len": 16, "windows": "brain",
            "repeats": args.repeats, "cold_repeats": args.cold_repeats}


def make_checkpoint(path: Path, scan: str, s: dict) -> Path:
    """Write a checkpoint with seeded random weights and BatchNorm statistics from ``scan``."""
    from _reference import reference_scan

    from ichlib.checkpoint import save_checkpoint
    from ichlib.preprocess.dataset import PreprocessConfig

    config = PreprocessConfig(windows=s["windows"], img_size=s["img_size"], seq_len=s["seq_len"])
    model = C.model_with_scan_statistics(config.n_channels, reference_scan(scan, config))
    return save_checkpoint(path, {"model": model.state_dict(), "model_config": model.model_config,
                                  "preprocess": config.to_dict(), "data": "synthetic"})


# --- workers ---------------------------------------------------------------------------

def warm(variant: str, checkpoint: str, scan: str, repeats: int) -> dict:
    """Median warm seconds of one path and its patient-level probabilities."""
    import numpy as np
    import torch
    from _reference import reference_predict

    from ichlib.checkpoint import load_checkpoint, model_from_checkpoint
    from ichlib.labels import LABELS
    from ichlib.predict import Predictor

    if variant == "reference":
        model, config = model_from_checkpoint(load_checkpoint(checkpoint))

        def run() -> np.ndarray:
            return reference_predict(model, scan, config)
    else:
        predictor = Predictor(checkpoint, device="cpu", amp=VARIANTS[variant])

        def run() -> np.ndarray:
            probabilities = predictor(scan).probabilities
            return np.array([probabilities[label] for label in LABELS])

    from ichlib.device import resolve_amp

    dtype = None if variant == "reference" else resolve_amp(VARIANTS[variant], torch.device("cpu"))
    times = C.time_calls(run, repeats=repeats, warmup=1)
    return {"path": variant, "warm_s": C.median(times), "warm_times_s": times,
            "precision": C.precision_name(dtype),
            "probabilities": run().tolist(), "torch_threads": torch.get_num_threads()}


def cold_reference(checkpoint: str, scan: str) -> None:
    """The reference as a whole process: load the checkpoint, predict, print probabilities."""
    from _reference import reference_predict

    from ichlib.checkpoint import load_checkpoint, model_from_checkpoint

    model, config = model_from_checkpoint(load_checkpoint(checkpoint))
    print(json.dumps(reference_predict(model, scan, config).tolist()))


def cold_breakdown(checkpoint: str, scan: str) -> None:
    """Seconds of each stage of a cold fp32 prediction in this fresh process, as JSON."""
    marks = [time.perf_counter()]
    import numpy as np
    import torch

    import ichlib.cli  # noqa: F401  (what python -m ichlib imports before the subcommand)
    from ichlib.io.load import load_volume
    from ichlib.predict import Predictor
    from ichlib.preprocess.dataset import prepare_scan
    from ichlib.preprocess.sampling import covering_indices
    marks.append(time.perf_counter())
    predictor = Predictor(checkpoint, device="cpu", amp="off")
    marks.append(time.perf_counter())
    hu = load_volume(scan).hu
    marks.append(time.perf_counter())
    x, _ = prepare_scan(np.asarray(hu, dtype=np.float32), predictor.preprocess, np.arange(hu.shape[0]))
    marks.append(time.perf_counter())
    with torch.inference_mode():
        predictor.model.forward_scan(x, covering_indices(hu.shape[0], predictor.preprocess.seq_len))
    marks.append(time.perf_counter())
    stages = ("imports", "checkpoint", "read", "resize", "model")
    print(json.dumps({k: b - a for k, a, b in zip(stages, marks[:-1], marks[1:], strict=True)}))


# --- parent ----------------------------------------------------------------------------

def cold_times(checkpoint: Path, scan: Path, repeats: int) -> dict:
    """Whole-process wall times of the fast CLI and the reference, and the CLI's probabilities."""
    from ichlib.labels import LABELS

    fast_cmd = [sys.executable, "-m", "ichlib", "predict", "--checkpoint", str(checkpoint),
                str(scan), "--json", "--device", "cpu", "--fp32"]
    ref_cmd = [sys.executable, __file__, "--cold-reference", str(checkpoint), str(scan)]
    help_cmd = [sys.executable, "-m", "ichlib", "--help"]
    parts_cmd = [sys.executable, __file__, "--cold-breakdown", str(checkpoint), str(scan)]
    fast, ref, helps, parts, cli_probs = [], [], [], [], None
    for _ in range(repeats):
        wall, out = C.time_process(parts_cmd)
        stages = json.loads(out.splitlines()[-1])
        parts.append({"start": wall - sum(stages.values()), **stages})
        wall, out = C.time_process(fast_cmd)
        fast.append(wall)
        probabilities = json.loads(out)["predictions"][0]["probabilities"]
        cli_probs = [probabilities[label] for label in LABELS]
        ref.append(C.time_process(ref_cmd)[0])
        helps.append(C.time_process(help_cmd)[0])
    return {"fast_cold_s": C.median(fast), "reference_cold_s": C.median(ref), "help_s": C.median(helps),
            "fast_cold_times_s": fast, "reference_cold_times_s": ref, "help_times_s": helps,
            "cli_probabilities": cli_probs,
            "breakdown_s": {k: C.median([p[k] for p in parts]) for k in parts[0]}}


def max_dp(a: list[float], b: list[float]) -> float:
    """max |a - b| over the six labels."""
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed warm calls (default 10)")
    parser.add_argument("--cold-repeats", type=int, default=5, help="cold processes (default 5)")
    parser.add_argument("--cold-reference", nargs=2, metavar=("CHECKPOINT", "SCAN"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--cold-breakdown", nargs=2, metavar=("CHECKPOINT", "SCAN"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cold_reference:
        cold_reference(*args.cold_reference)
        return 0
    if args.cold_breakdown:
        cold_breakdown(*args.cold_breakdown)
        return 0
    if args.worker:
        spec = json.loads(args.worker)
        C.emit([warm(v, spec["checkpoint"], spec["scan"], spec["repeats"]) for v in spec["variants"]])
        return 0

    s = settings(args)
    data_dir = C.synthetic_dataset(args.data_root, 1, s["scan_size"], (s["n_slices"], s["n_slices"]))
    scan = sorted((data_dir / "ct_scans").glob("*.nii"))[0]
    checkpoint = args.data_root / f"predict-{s['scan_size']}px-{s['img_size']}-S{s['seq_len']}.pt"
    if not checkpoint.exists():
        make_checkpoint(checkpoint, str(scan), s)
    os.environ.setdefault("TQDM_DISABLE", "1")
    machine = C.machine_info()
    groups = [list(VARIANTS)] if args.quick else [[v] for v in VARIANTS]
    results = []
    for group in groups:
        print(f"measuring warm {', '.join(group)} ...", flush=True)
        spec = {"variants": group, "checkpoint": str(checkpoint), "scan": str(scan),
                "repeats": s["repeats"]}
        out, proc = C.run_worker(__file__, ["--worker", json.dumps(spec)])
        results += [{**r, **proc} for r in out]
    print("measuring cold processes ...", flush=True)
    cold = cold_times(checkpoint, scan, s["cold_repeats"])

    by = {r["path"]: r for r in results}
    for r in results:
        r["speedup_vs_reference"] = by["reference"]["warm_s"] / r["warm_s"]
    agreement = {
        "default_vs_fp32": max_dp(by["fast"]["probabilities"], by["fast_fp32"]["probabilities"]),
        "bf16_vs_fp32": max_dp(by["bf16_forced"]["probabilities"], by["fast_fp32"]["probabilities"]),
        "fp32_vs_reference": max_dp(by["fast_fp32"]["probabilities"], by["reference"]["probabilities"]),
        "default_vs_reference": max_dp(by["fast"]["probabilities"], by["reference"]["probabilities"]),
        "cli_vs_warm_fp32": max_dp(cold["cli_probabilities"], by["fast_fp32"]["probabilities"]),
    }
    fast_warm = by["fast"]["warm_s"]
    targets = [
        C.target_row("warm predict, 40-slice 512² scan", fast_warm, WARM_TARGET_S, "s",
                     higher_is_better=False),
        C.target_row("warm speed-up vs reference", by["fast"]["speedup_vs_reference"],
                     SPEEDUP_TARGET, "x"),
        C.target_row("cold ichlib predict --fp32, one scan (median process)", cold["fast_cold_s"],
                     COLD_TARGET_S, "s", higher_is_better=False),
        C.target_row("ichlib --help (median process)", cold["help_s"], HELP_TARGET_S, "s",
                     higher_is_better=False),
        C.target_row("max abs Δp, fast vs fp32 reference", agreement["default_vs_reference"], 0.01, "",
                     higher_is_better=False),
    ]

    print(f"\nPredict one {s['n_slices']}-slice {s['scan_size']}² scan -> {s['img_size']}², "
          f"S = {s['seq_len']} ({'QUICK smoke run' if args.quick else 'full run'}; synthetic data, "
          "untrained weights)")
    print(C.machine_line(machine))
    print(C.format_table(results, [("path", "path", ""), ("precision", "precision", ""), ("warm_s", "warm s", ".3f"),
                                   ("speedup_vs_reference", "x reference", ".2f"),
                                   ("peak_rss_mb", "peak RSS MB", ".0f")]))
    print(f"\ncold (whole process, median of {s['cold_repeats']}): ichlib predict --fp32 "
          f"{cold['fast_cold_s']:.2f} s, reference {cold['reference_cold_s']:.2f} s "
          f"(x{cold['reference_cold_s'] / cold['fast_cold_s']:.2f}); ichlib --help {cold['help_s']:.2f} s")
    print("cold breakdown (s, median per stage): "
          + ", ".join(f"{k} {v:.2f}" for k, v in cold["breakdown_s"].items()))
    print("max |Δp| patient level: " + ", ".join(f"{k} {v:.2g}" for k, v in agreement.items()))
    note = (f"\nThe default path (amp='auto') runs {by['fast']['precision']} on this CPU "
            "(ichlib.device.bf16_pays_on_cpu: AMX, or AVX512-BF16 measured faster); "
            "bf16_forced shows what bf16 costs in accuracy and gives in speed.")
    return C.finish(NAME, args, machine, s, targets, note, results=results, cold=cold,
                    max_abs_dp=agreement)

if __name__ == "__main__":
    sys.exit(main())
