"""Print the results in ``runs/bench/*.json`` as Markdown tables (for RESULTS.md and the README).

    python benchmarks/report.py [RESULTS_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "runs" / "bench"


def _f(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _machine(result: dict) -> str:
    m = result["machine"]
    load = m.get("load_average_at_start") or []
    end = result.get("load_average_at_end") or []
    return (f"{m['cpu']}, {m['cpu_count']} cores, native bf16: {m['native_bf16']}, torch "
            f"{m['torch']} ({m['torch_threads']} threads); load average (1 min) "
            f"{_f(load[0] if load else None, '.1f')} at start, {_f(end[0] if end else None, '.1f')} at end")


def preprocess(r: dict) -> str:
    """The preprocessing table."""
    rows = [[x["path"], str(x["n_scans"]), _f(x["scans_per_s"], ".2f"), _f(x["ratio_to_reference"], ".2f"),
             _f(x["total_s"], ".1f"), _f(x["max_abs_diff"], ".4f"), _f(x["mean_abs_diff"], ".5f"),
             _f(x["peak_rss_mb"], ".0f")] for x in r["results"]]
    return _table(["path", "scans", "scans/s", "× reference", "seconds", "max abs diff",
                   "mean abs diff", "peak RSS MB"], rows)


def train(r: dict) -> str:
    """The training table."""
    rows = [[x["windows"], x["path"], x["precision"], _f(x["slices_per_s"], ".2f"),
             _f(100 * x["data_wait_share"], ".1f"), _f(x["peak_rss_mb"], ".0f")] for x in r["results"]]
    ratios = [[c["windows"], _f(c["ratio"], ".2f")] for c in r["comparisons"]]
    return (_table(["windows", "path", "precision", "slices/s", "data wait %", "peak RSS MB"], rows)
            + "\n\n" + _table(["windows", "fast / reference"], ratios))


def predict(r: dict) -> str:
    """The predict table."""
    rows = [[x["path"], x.get("precision", ""), _f(x["warm_s"], ".3f"), _f(x["speedup_vs_reference"], ".2f")]
            for x in r["results"]]
    c = r["cold"]
    dp = ", ".join(f"{k} {v:.2g}" for k, v in r["max_abs_dp"].items())
    help_s = f"; `ichlib --help` {c['help_s']:.2f} s" if "help_s" in c else ""
    return (_table(["path", "precision", "warm s", "× reference"], rows)
            + f"\n\nCold (whole process, median): `ichlib predict --fp32` {c['fast_cold_s']:.2f} s, reference "
              f"{c['reference_cold_s']:.2f} s{help_s}.\n\nMax abs Δp (patient level): {dp}.")


def predict_levers(r: dict) -> str:
    """The table of prediction levers (the CNN over every slice)."""
    rows = [[x["lever"], _f(x["cnn_s"], ".3f"), _f(x["speedup"], ".2f"), _f(x["max_abs_dp"], ".4f")]
            for x in r["results"]]
    return _table(["lever", "CNN s", "× reference", "max abs Δp"], rows)


def targets(results: list[dict]) -> str:
    """Every target with its measured value and PASS/MISS."""
    rows = [[t["target"], _f(t["value"], ".3g"), t["goal"], t["status"]]
            for r in results for t in r.get("targets", [])]
    return _table(["target", "measured", "goal", "status"], rows)


def main(argv: list[str] | None = None) -> int:
    folder = Path((argv or sys.argv[1:] or [BENCH_DIR])[0])
    found = []
    for name, render in (("preprocess", preprocess), ("train", train), ("predict", predict),
                         ("predict_levers", predict_levers)):
        path = folder / f"{name}.json"
        if not path.exists():
            print(f"<!-- {path} not found: run benchmarks/bench_{name}.py -->\n")
            continue
        result = json.loads(path.read_text())
        found.append(result)
        print(f"### {name} (`python benchmarks/bench_{name}.py`)\n\n{_machine(result)}\n\n{render(result)}\n")
    if found:
        print(f"### Targets\n\n{targets(found)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
