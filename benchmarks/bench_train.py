"""Training throughput (forward + backward + optimizer step) and peak memory: reference vs fast.

At the design's configuration (ResNet-18 + BiLSTM, 256², S = 16, B = 4, the brain window)
and at three windows (brain, subdural, soft), on synthetic 512² scans of about 40 slices:

- reference: :class:`_reference.ReferenceDataset` (nibabel ``get_fdata``, every slice
  resized and windowed on every access), ``num_workers=0``, fp32 eager, contiguous
  tensors, ``torch.optim.AdamW`` with its defaults;
- fast: what ``ichlib train`` runs by default: :class:`ichlib.ScanDataset` over the
  float16 resized-volume cache (built beforehand, timed separately), bf16 autocast where
  it pays (:func:`ichlib.device.bf16_pays_on_cpu`: AMX, or AVX512-BF16 measured faster),
  channels_last, fused AdamW (:func:`ichlib.training.engine.make_optimizer`);
- fast_bf16 (brain window only): the fast path with bf16 autocast forced (``--amp bf16``),
  so each CPU records what bf16 training would give it against its default.

Both paths apply the same augmentation to the same items. Each (path, windows) pair runs
in its own process; the figure is the median step time over ``--steps`` steps after
``--warmup`` untimed ones, and "data wait" is the share of step time spent in
``next(loader)``.

    python benchmarks/bench_train.py            # full run (a few minutes on 2 cores)
    python benchmarks/bench_train.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import _common as C

NAME = "train"
WINDOW_SETS = ("brain", "brain,subdural,soft")
RSS_TARGET_MB = 6 * 1024


def settings(args: argparse.Namespace) -> dict:
    """Data and model sizes for a full or a quick run."""
    if args.quick:
        return {"scan_size": 96, "n_scans": 4, "n_slices": [10, 12], "img_size": 32, "seq_len": 4,
                "batch_size": 2, "steps": 1, "warmup": 1, "num_workers": args.num_workers}
    return {"scan_size": 512, "n_scans": 8, "n_slices": [36, 44], "img_size": 256, "seq_len": 16,
            "batch_size": 4, "steps": args.steps, "warmup": args.warmup,
            "num_workers": args.num_workers}


# --- worker ----------------------------------------------------------------------------

def make_run(path: str, windows: str, s: dict, data_dir: str, cache_dir: str):
    """Model, loss, optimizer, dataset, loader and autocast dtype for one path."""
    import torch
    from _reference import ReferenceDataset
    from torch.utils.data import DataLoader

    from ichlib.device import resolve_amp
    from ichlib.io.ctich import read_ct_ich
    from ichlib.losses import ScanSliceLoss
    from ichlib.model import CNNBiLSTM
    from ichlib.preprocess.augment import ScanAugment
    from ichlib.preprocess.dataset import PreprocessConfig, ScanDataset
    from ichlib.training.engine import make_optimizer

    data = read_ct_ich(data_dir)
    config = PreprocessConfig(windows=windows, img_size=s["img_size"], seq_len=s["seq_len"])
    torch.manual_seed(0)
    model = CNNBiLSTM(in_channels=config.n_channels)
    device = torch.device("cpu")
    if path == "reference":
        dataset = ReferenceDataset(data, data.patient_ids, config, augment=ScanAugment())
        loader = DataLoader(dataset, batch_size=s["batch_size"], shuffle=True, drop_last=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        amp_dtype = None
    else:
        dataset = ScanDataset(data, data.patient_ids, config, cache_dir, train=True,
                              augment=ScanAugment())
        loader = tuned_loader(dataset, s["batch_size"], s["num_workers"])
        model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model)
        amp_dtype = torch.bfloat16 if path == "fast_bf16" else resolve_amp("auto", device)
    return model, ScanSliceLoss(0.5), optimizer, dataset, loader, amp_dtype


def tuned_loader(dataset, batch_size: int, num_workers: int):
    """The fast path's DataLoader: workers kept alive across epochs and prefetching when used.

    On a 2-core CPU a cached item costs milliseconds, so ``num_workers=0`` (the default here
    and in ``ichlib train``) leaves both cores to the model; workers pay off with more cores.
    """
    from torch.utils.data import DataLoader

    extra = {"persistent_workers": True, "prefetch_factor": 4} if num_workers > 0 else {}
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                      num_workers=num_workers, **extra)


def timed_steps(model, criterion, optimizer, dataset, loader, amp_dtype, n_steps: int
                ) -> list[tuple[float, float]]:
    """Run ``n_steps`` training steps; returns ``(data wait, step)`` seconds per step."""
    import torch

    from ichlib.device import autocast

    device = torch.device("cpu")
    model.train()
    epoch, batches = 0, iter(loader)
    records = []
    while len(records) < n_steps:
        start = time.perf_counter()
        batch = next(batches, None)
        if batch is None:  # next epoch; reseeding and restarting are part of the wait
            epoch += 1
            dataset.set_epoch(epoch)
            batches = iter(loader)
            batch = next(batches)
        got = time.perf_counter()
        with autocast(device, amp_dtype):
            output = model(batch["x"])
        parts = criterion(output, batch["scan_labels"], batch["slice_labels"])
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        optimizer.step()
        if not torch.isfinite(parts.total):
            raise RuntimeError("non-finite loss in the benchmark")
        records.append((got - start, time.perf_counter() - start))
    return records


def worker(spec: dict) -> dict:
    """Measure one (path, windows) pair; returns throughput, data wait and settings."""
    import torch

    s = spec["settings"]
    model, criterion, optimizer, dataset, loader, amp_dtype = make_run(
        spec["path"], spec["windows"], s, spec["data_dir"], spec["cache_dir"])
    records = timed_steps(model, criterion, optimizer, dataset, loader, amp_dtype,
                          s["warmup"] + s["steps"])[s["warmup"]:]
    step = C.median([t for _, t in records])
    slices = s["batch_size"] * s["seq_len"]
    return {"path": spec["path"], "windows": spec["windows"],
            "slices_per_s": slices / step, "median_step_s": step,
            "data_wait_share": sum(w for w, _ in records) / sum(t for _, t in records),
            "step_s": [t for _, t in records], "data_wait_s": [w for w, _ in records],
            "precision": C.precision_name(amp_dtype),
            "channels_last": spec["path"] != "reference",
            "num_workers": 0 if spec["path"] == "reference" else s["num_workers"],
            "torch_threads": torch.get_num_threads()}


# --- parent ----------------------------------------------------------------------------

def build_cache(data_dir: Path, cache_dir: Path, img_size: int) -> float:
    """Build the resized-volume cache of every scan; returns the seconds it took."""
    from ichlib.io.ctich import read_ct_ich
    from ichlib.preprocess.cache import VolumeCache

    data = read_ct_ich(data_dir)
    cache = VolumeCache(cache_dir, img_size)
    start = time.perf_counter()
    for pid in data.patient_ids:
        cache.get(data.scans[pid])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per path (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="DataLoader workers of the fast path (default 0)")
    args = parser.parse_args(argv)
    if args.worker:
        specs = json.loads(args.worker)
        C.emit([worker(spec) for spec in specs])
        return 0

    s = settings(args)
    data_dir = C.synthetic_dataset(args.data_root, s["n_scans"], s["scan_size"], tuple(s["n_slices"]))
    cache_dir = args.data_root / "cache"
    cache_s = build_cache(data_dir, cache_dir, s["img_size"])
    machine = C.machine_info()
    pairs = [(path, w) for w in WINDOW_SETS for path in ("reference", "fast")]
    pairs.append(("fast_bf16", WINDOW_SETS[0]))  # the design config, bf16 forced
    specs = [{"path": path, "windows": w, "settings": s, "data_dir": str(data_dir),
              "cache_dir": str(cache_dir)} for path, w in pairs]
    # Full runs isolate every (path, windows) pair; a quick run shares one worker.
    groups = [[spec] for spec in specs] if not args.quick else [specs]
    results = []
    for group in groups:
        names = ", ".join(f"{g['path']} ({g['windows']})" for g in group)
        print(f"measuring {names} ...", flush=True)
        out, proc = C.run_worker(__file__, ["--worker", json.dumps(group)])
        results += [{**r, **proc} for r in out]

    comparisons = []
    for w in WINDOW_SETS:
        ref, fast = (next(r for r in results if r["windows"] == w and r["path"] == p)
                     for p in ("reference", "fast"))
        comparisons.append({"windows": w, "reference_slices_per_s": ref["slices_per_s"],
                            "fast_slices_per_s": fast["slices_per_s"],
                            "ratio": fast["slices_per_s"] / ref["slices_per_s"]})
    design = next(r for r in results if r["windows"] == "brain" and r["path"] == "fast")
    bf16 = next(r for r in results if r["path"] == "fast_bf16")
    precision = {"default_precision": design["precision"], "default_slices_per_s": design["slices_per_s"],
                 "bf16_slices_per_s": bf16["slices_per_s"],
                 "bf16_over_default": bf16["slices_per_s"] / design["slices_per_s"]}
    targets = [
        C.target_row("training speed-up at the design config", comparisons[0]["ratio"], 3, "x"),
        C.target_row("fast path peak RSS (design config)", design["peak_rss_mb"] / 1024, 6, "GB",
                     higher_is_better=False),
        C.target_row("fast path data wait share of step time", 100 * design["data_wait_share"], 10,
                     "%", higher_is_better=False),
    ]
    table_rows = [{**r, "wait_pct": 100 * r["data_wait_share"]} for r in results]
    print(f"\nTraining throughput, ResNet-18 + BiLSTM, {s['img_size']}², S = {s['seq_len']}, "
          f"B = {s['batch_size']} ({'QUICK smoke run' if args.quick else 'full run'}; synthetic data)")
    print(C.machine_line(machine))
    print(C.format_table(table_rows, [
        ("windows", "windows", ""), ("path", "path", ""), ("precision", "precision", ""),
        ("slices_per_s", "slices/s", ".2f"), ("median_step_s", "step s", ".3f"),
        ("wait_pct", "data wait %", ".1f"), ("peak_rss_mb", "peak RSS MB", ".0f")]))
    print()
    print(C.format_table(comparisons, [("windows", "windows", ""),
                                       ("reference_slices_per_s", "reference slices/s", ".2f"),
                                       ("fast_slices_per_s", "fast slices/s", ".2f"),
                                       ("ratio", "fast / reference", ".2f")]))
    print(f"\nbf16 forced against the default ({precision['default_precision']}), brain window: "
          f"{precision['bf16_slices_per_s']:.2f} against {precision['default_slices_per_s']:.2f} "
          f"slices/s (x{precision['bf16_over_default']:.2f})")
    print(f"\ncache build for the {s['n_scans']} training scans (before timing): {cache_s:.2f} s")
    note = (f"\nThe fast path (amp='auto') trains in {design['precision']} on this CPU "
            "(ichlib.device.bf16_pays_on_cpu: AMX, or AVX512-BF16 measured faster); "
            "fast_bf16 forces bf16 for comparison.")
    return C.finish(NAME, args, machine, s, targets, note, cache_build_s=cache_s, results=results,
                    comparisons=comparisons, precision=precision)

if __name__ == "__main__":
    sys.exit(main())
