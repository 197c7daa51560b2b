"""GPU throughput: training and inference with bf16 + channels_last (and torch.compile).

At the design's configuration (ResNet-18 + BiLSTM, 256², S = 16, B = 4, brain window) on
synthetic 512² scans of about 40 slices. Rows:

- reference: fp32 eager, contiguous, on-the-fly loading (nibabel ``get_fdata``, every
  slice resized and windowed), ``num_workers=0``, plain AdamW;
- fast: bf16 autocast (``resolve_amp("auto")``), channels_last, the float16 volume cache,
  a DataLoader with workers, pinned memory and prefetching, fused AdamW;
- fast + compile: the same model through ``torch.compile`` (its first steps, which
  compile, are reported as ``compile_s`` and not timed); ``--no-compile`` skips it.

Training figures are slices per second from the median step (each step ends with
``torch.cuda.synchronize()``), the share of step time spent waiting in ``next(loader)``,
and peak GPU memory (``torch.cuda.max_memory_allocated``). Inference is model-only
throughput on batches already on the GPU, under ``inference_mode``.

One command, a few minutes on an H100/H200 (most of it writing the synthetic scans and
compiling):

    python benchmarks/bench_gpu.py

Without CUDA it says so and exits (status 0) having measured nothing. ``--allow-cpu``
runs the same code on the CPU, only to test the script.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import _common as C

NAME = "gpu"
TARGET_SLICES_PER_S = 3000.0
WAIT_TARGET_PCT = 10.0


def settings(args: argparse.Namespace) -> dict:
    """Sizes for a full or a quick run."""
    workers = args.num_workers if args.num_workers is not None else min(8, os.cpu_count() or 1)
    if args.quick:
        return {"scan_size": 96, "n_scans": 4, "n_slices": [10, 12], "img_size": 64, "seq_len": 4,
                "batch_size": 2, "steps": 2, "warmup": 1, "ref_steps": 1, "infer_batch": 2, "infer_repeats": 2,
                "num_workers": min(workers, 1)}
    return {"scan_size": 512, "n_scans": 32, "n_slices": [36, 44], "img_size": 256, "seq_len": 16,
            "batch_size": 4, "steps": args.steps, "warmup": 10, "ref_steps": 5, "infer_batch": 32,
            "infer_repeats": 20, "num_workers": workers}


def sync(device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device) -> float | None:
    """Peak GPU memory allocated since the last reset, in MB (None on the CPU)."""
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def train_row(name: str, s: dict, data, cache_dir: str, device, fast: bool, compile_model: bool) -> dict:
    """Train for warm-up + timed steps; returns throughput, data wait and peak memory."""
    import torch
    from _reference import ReferenceDataset
    from torch.utils.data import DataLoader

    from ichlib.device import autocast, resolve_amp
    from ichlib.losses import ScanSliceLoss
    from ichlib.model import CNNBiLSTM
    from ichlib.preprocess.augment import ScanAugment
    from ichlib.preprocess.dataset import PreprocessConfig, ScanDataset
    from ichlib.training.engine import make_optimizer

    config = PreprocessConfig(img_size=s["img_size"], seq_len=s["seq_len"])
    torch.manual_seed(0)
    model = CNNBiLSTM(in_channels=config.n_channels).to(device)
    criterion = ScanSliceLoss(0.5).to(device)
    torch.backends.cudnn.benchmark = fast
    if fast:
        # One epoch long enough for every step, so no epoch boundary restarts the workers.
        repeat = -(-(s["warmup"] + s["steps"]) * s["batch_size"] // len(data.patient_ids))
        dataset = ScanDataset(data, data.patient_ids * repeat, config, cache_dir, train=True,
                              augment=ScanAugment())
        extra = ({"persistent_workers": True, "prefetch_factor": 4} if s["num_workers"] else {})
        loader = DataLoader(dataset, batch_size=s["batch_size"], shuffle=True, drop_last=True,
                            num_workers=s["num_workers"], pin_memory=device.type == "cuda", **extra)
        model = model.to(memory_format=torch.channels_last)
        optimizer, amp_dtype = make_optimizer(model), resolve_amp("auto", device)
        steps, warmup = s["steps"], s["warmup"]
    else:
        dataset = ReferenceDataset(data, data.patient_ids, config, augment=ScanAugment())
        loader = DataLoader(dataset, batch_size=s["batch_size"], shuffle=True, drop_last=True)
        optimizer, amp_dtype = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4), None
        steps, warmup = s["ref_steps"], 1
    step_model = torch.compile(model) if compile_model else model
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    records, epoch, batches = [], 0, iter(loader)
    start_all = time.perf_counter()
    compile_s = None
    for i in range(warmup + steps):
        start = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            epoch += 1
            dataset.set_epoch(epoch)
            batches = iter(loader)
            batch = next(batches)
        x = batch["x"].to(device, non_blocking=True)
        got = time.perf_counter()
        with autocast(device, amp_dtype):
            output = step_model(x)
        parts = criterion(output, batch["scan_labels"].to(device, non_blocking=True),
                          batch["slice_labels"].to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        optimizer.step()
        sync(device)
        if i == warmup - 1:
            compile_s = time.perf_counter() - start_all
        if i >= warmup:
            records.append((got - start, time.perf_counter() - start))
    step = C.median([t for _, t in records])
    slices = s["batch_size"] * s["seq_len"]
    return {"row": name, "kind": "train", "precision": "fp32" if amp_dtype is None else str(amp_dtype)[6:],
            "channels_last": fast, "compiled": compile_model,
            "num_workers": s["num_workers"] if fast else 0, "steps": len(records),
            "slices_per_s": slices / step, "mean_slices_per_s": slices * len(records) / sum(t for _, t in records),
            "median_step_s": step, "data_wait_pct": 100 * sum(w for w, _ in records) / sum(t for _, t in records),
            "peak_gpu_mb": peak_memory_mb(device),
            "warmup_s": compile_s if compile_model else None}


def infer_row(name: str, s: dict, device, compile_model: bool) -> dict:
    """Model-only inference throughput (bf16 where supported, channels_last, inference_mode)."""
    import torch

    from ichlib.device import autocast, resolve_amp
    from ichlib.model import CNNBiLSTM

    torch.manual_seed(0)
    model = CNNBiLSTM().to(device).to(memory_format=torch.channels_last).eval()
    run = torch.compile(model) if compile_model else model
    amp_dtype = resolve_amp("auto", device)
    x = torch.rand(s["infer_batch"], s["seq_len"], 1, s["img_size"], s["img_size"], device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def call() -> None:
        with torch.inference_mode(), autocast(device, amp_dtype):
            run(x)
        sync(device)

    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    times = C.time_calls(call, repeats=s["infer_repeats"], warmup=2)
    slices = s["infer_batch"] * s["seq_len"]
    return {"row": name, "kind": "inference", "compiled": compile_model,
            "precision": "fp32" if amp_dtype is None else str(amp_dtype)[6:],
            "slices_per_s": slices / C.median(times), "median_batch_s": C.median(times),
            "peak_gpu_mb": peak_memory_mb(device), "warmup_s": first if compile_model else None}


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="timed training steps (default 100)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers of the fast rows (default min(8, cores))")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run on the CPU when there is no CUDA (tests the script only)")
    args = parser.parse_args(argv)
    import torch

    out_path = C.output_path(args.out, NAME, args.quick)
    if not torch.cuda.is_available() and not args.allow_cpu:
        message = ("No CUDA device: torch.cuda.is_available() is False, so the GPU benchmark "
                   "measured nothing. Run it on a machine with an NVIDIA GPU.")
        print(message)
        C.write_result(out_path, {"benchmark": NAME, "status": "skipped", "reason": message,
                                  "machine": C.machine_info()})
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    s = settings(args)
    data_dir = C.synthetic_dataset(args.data_root, s["n_scans"], s["scan_size"], tuple(s["n_slices"]))
    cache_dir = str(args.data_root / "cache")
    from ichlib.io.ctich import read_ct_ich
    from ichlib.preprocess.dataset import PreprocessConfig, ScanDataset

    data = read_ct_ich(data_dir)
    ScanDataset(data, data.patient_ids, PreprocessConfig(img_size=s["img_size"], seq_len=s["seq_len"]),
                cache_dir).warm_cache()
    machine = C.machine_info()
    compile_ok = device.type == "cuda" and not args.no_compile
    rows = []
    plan = [("reference (fp32 eager, on the fly)", False, False),
            ("fast (bf16 + channels_last, cache)", True, False)]
    if compile_ok:
        plan.append(("fast + torch.compile", True, True))
    for name, fast, comp in plan:
        print(f"training: {name} ...", flush=True)
        rows.append(_guarded(lambda n=name, f=fast, c=comp: train_row(n, s, data, cache_dir, device, f, c), name))
    for name, comp in [("inference, eager", False)] + ([("inference, torch.compile", True)] if compile_ok else []):
        print(f"{name} ...", flush=True)
        rows.append(_guarded(lambda n=name, c=comp: infer_row(n, s, device, c), name))

    fast_rows = [r for r in rows if r.get("kind") == "train" and r["channels_last"]]
    best = max(fast_rows, key=lambda r: r["slices_per_s"], default={})
    ref = next((r for r in rows if r["row"] == plan[0][0] and "slices_per_s" in r), None)
    targets = [C.target_row("GPU training at the design config", best.get("slices_per_s"),
                            TARGET_SLICES_PER_S, "slices/s"),
               C.target_row("GPU data wait share (best fast row)", best.get("data_wait_pct"),
                            WAIT_TARGET_PCT, "%", higher_is_better=False)]
    for r in rows:
        if r.get("kind") == "train" and ref is not None:
            r["x_reference"] = r["slices_per_s"] / ref["slices_per_s"]
    device_name = machine["cuda"] or machine["cpu"]
    print(f"\nGPU benchmark on {device_name} ({'QUICK smoke run' if args.quick else 'full run'}; "
          f"synthetic data), ResNet-18 + BiLSTM, {s['img_size']}², S = {s['seq_len']}, "
          f"B = {s['batch_size']} (inference batch {s['infer_batch']})")
    table = C.format_table(rows, [("row", "row", ""), ("precision", "precision", ""),
                                  ("slices_per_s", "slices/s", ".0f"), ("x_reference", "x ref", ".1f"),
                                  ("data_wait_pct", "data wait %", ".1f"), ("peak_gpu_mb", "peak GPU MB", ".0f"),
                                  ("warmup_s", "compile/warm-up s", ".1f"), ("error", "error", "")])
    print(table)
    print()
    print(C.targets_table(targets))
    payload = {"benchmark": NAME, "status": "measured", "device": device_name, "data": "synthetic",
               "note": C.SYNTHETIC_NOTE, "quick": args.quick, "machine": machine, "settings": s,
               "rows": rows, "targets": targets}
    print(f"wrote {C.write_result(out_path, payload)}")
    return 0


def _guarded(fn, name: str) -> dict:
    """Run one row; a failure (e.g. torch.compile unavailable) becomes a row with the error."""
    try:
        return fn()
    except Exception as exc:  # one failed row must not lose the others
        print(f"  {name} failed: {type(exc).__name__}: {exc}", flush=True)
        return {"row": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}


if __name__ == "__main__":
    sys.exit(main())
