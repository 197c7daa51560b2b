"""Helpers shared by the benchmark scripts: timing, worker processes, peak RSS, tables, JSON.

Each script measures every path (the plain reference, ichlib's fast path, ...) in a worker
process of its own, started by :func:`run_worker`: the parent reads the worker's peak
resident memory from ``os.wait4``, so two paths never share a peak, and each path starts
with cold Python state. A worker prints its result as one JSON line after :data:`MARKER`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ichlib.io.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
#: Default folder for results, data and caches (``runs/`` is git-ignored).
BENCH_DIR = ROOT / "runs" / "bench"
#: Prefix of the worker's result line on stdout.
MARKER = "BENCH-RESULT "
SYNTHETIC_NOTE = ("SYNTHETIC phantom scans written by ichlib.synthetic; the figures measure "
                  "speed and numerical agreement, not diagnostic accuracy.")


def base_parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes: ``--quick``, ``--out``, ``--data-root``, ``--worker``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="tiny data and few iterations (a smoke run; figures mean nothing)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default runs/bench/<name>.json, <name>-quick.json)")
    parser.add_argument("--data-root", type=Path, default=BENCH_DIR / "data",
                        help="where the synthetic scans and caches are made (reused when present)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def time_each(fn: Callable[[object], object], items: Sequence[object]) -> list[float]:
    """Wall seconds of ``fn(item)`` for ``items[1:]``; ``fn(items[0])`` runs first as a warm-up."""
    fn(items[0])
    times = []
    for item in items[1:]:
        start = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    """Median as a float (NaN for an empty sequence)."""
    return float(statistics.median(values)) if len(values) else float("nan")


def emit(result: object) -> None:
    """Print a worker's result for :func:`run_worker` to pick up."""
    print(MARKER + json.dumps(result), flush=True)


def run_worker(script: str | os.PathLike, args: Sequence[str]) -> tuple[object, dict]:
    """Run ``python script *args`` and return ``(result, process)``.

    Returns:
        The JSON the worker passed to :func:`emit`, and ``{"peak_rss_mb", "wall_s"}``
        for its process: the peak resident memory (``ru_maxrss`` from ``os.wait4``: the
        largest of the worker and any child it waited for, e.g. DataLoader workers) and
        the wall time from start to exit.

    Raises:
        RuntimeError: If the worker fails or prints no result.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    lines = [line for line in out.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker {' '.join(args)} failed (exit {proc.returncode}):\n{out}")
    return json.loads(lines[-1][len(MARKER):]), {"peak_rss_mb": usage.ru_maxrss / 1024.0,
                                                  "wall_s": wall}


def time_process(cmd: Sequence[str]) -> tuple[float, str]:
    """Wall seconds of a whole process (start to exit) and its stdout; raises if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr}")
    return wall, proc.stdout


def cpu_flags() -> set[str]:
    """The flags line of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info() -> dict:
    """What the figures depend on: CPU, cores, native bf16, load, library versions."""
    import torch

    from ichlib.device import cpu_model

    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "avx512": "avx512f" in flags,
        "native_bf16": bool(flags & {"amx_bf16", "avx512_bf16"}),
        "amx": "amx_bf16" in flags,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def precision_name(dtype: object | None) -> str:
    """``"fp32"`` for no autocast, else the dtype's short name (``"bfloat16"``)."""
    return "fp32" if dtype is None else str(dtype).replace("torch.", "")


def model_with_scan_statistics(n_channels: int, slices: object) -> object:
    """A seeded, untrained ``CNNBiLSTM`` whose BatchNorm statistics are those of ``slices``.

    ``slices`` is a float tensor ``[N, C, H, W]`` of windowed slices. With the running
    statistics set from real scans, activations have realistic ranges and the probabilities
    spread out instead of saturating; they mean nothing, their agreement between paths does.
    The model is returned in eval mode.
    """
    import torch

    from ichlib.model import CNNBiLSTM

    torch.manual_seed(0)
    model = CNNBiLSTM(in_channels=n_channels)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = the average over the batches seen
    model.train()
    with torch.no_grad():
        model.embed(slices)
    return model.eval()


def machine_line(machine: dict) -> str:
    """One printed line: CPU, cores, native bf16 and the load when the run started."""
    return (f"machine: {machine['cpu']}, {machine['cpu_count']} cores, native bf16: "
            f"{machine['native_bf16']}, AMX: {machine.get('amx', False)}, "
            f"load average {machine['load_average_at_start']}")


def verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    """``PASS`` or ``MISS`` against ``target`` (``n/a`` without a value)."""
    if value is None or value != value:
        return "n/a"
    return "PASS" if (value >= target if higher_is_better else value <= target) else "MISS"


def target_row(name: str, value: float | None, target: float, unit: str,
               higher_is_better: bool = True) -> dict:
    """One target of the issue with the measured value and PASS/MISS."""
    return {"target": name, "value": value, "goal": f"{'>=' if higher_is_better else '<='} {target:g} {unit}",
            "status": verdict(value, target, higher_is_better)}


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """A plain-text table; ``columns`` are ``(key, header, format spec)``."""
    def cell(row: dict, key: str, spec: str) -> str:
        value = row.get(key)
        if value is None:
            return "n/a"
        return format(value, spec) if spec and not isinstance(value, str) else str(value)

    body = [[cell(r, k, s) for k, _, s in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, (_, h, _) in enumerate(columns)]
    lines = ["  ".join(h.ljust(w) for (_, h, _), w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def targets_table(targets: Sequence[dict]) -> str:
    """The targets as a table with a PASS/MISS column."""
    return format_table(targets, [("target", "target", ""), ("value", "measured", ".3g"),
                                  ("goal", "goal", ""), ("status", "status", "")])


def output_path(out: Path | None, name: str, quick: bool) -> Path:
    """Where the result JSON goes."""
    return out if out is not None else BENCH_DIR / f"{name}{'-quick' if quick else ''}.json"


def write_result(path: Path, payload: dict) -> Path:
    """Write the result JSON atomically (NaN becomes null) and return the path."""
    atomic_write_text(path, json.dumps(_json_safe(payload), indent=2, allow_nan=False) + "\n")
    return path


def finish(name: str, args: argparse.Namespace, machine: dict, settings: dict, targets: list[dict],
           after_targets: str | None = None, **fields: object) -> int:
    """Print the targets table (and ``after_targets``), write the JSON result, return 0.

    The JSON holds the fields every benchmark writes (name, synthetic-data note, quick flag,
    machine, settings, targets, load average at the end) plus ``fields``.
    """
    print()
    print(targets_table(targets))
    if after_targets:
        print(after_targets)
    payload = {"benchmark": name, "data": "synthetic", "note": SYNTHETIC_NOTE, "quick": args.quick,
               "machine": machine, "settings": settings, **fields, "targets": targets,
               "load_average_at_end": list(os.getloadavg())}
    print(f"wrote {write_result(output_path(args.out, name, args.quick), payload)}")
    return 0


def synthetic_dataset(root: Path, n_patients: int, size: int, n_slices: tuple[int, int],
                      seed: int = 0) -> Path:
    """A synthetic CT-ICH folder under ``root``, written once and reused afterwards.

    The folder name records every setting, and the phantom writes ``synthetic.json``
    last, so a complete folder with that name holds exactly these scans.
    """
    folder = Path(root) / f"ctich-{size}px-{n_patients}p-{n_slices[0]}to{n_slices[1]}sl-seed{seed}"
    if not (folder / "synthetic.json").exists():
        from ichlib.synthetic.writer import write_synthetic_ct_ich

        print(f"writing {n_patients} synthetic scans ({size}², {n_slices[0]}-{n_slices[1]} slices) "
              f"to {folder} ...", flush=True)
        write_synthetic_ct_ich(folder, n_patients=n_patients, size=size, seed=seed,
                               n_slices_range=n_slices)
    return folder


def _json_safe(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value
