"""How much do notebook 04's results move with the seed? The course's models over several seeds.

For each seed, notebook 04's recipe at its defaults (128 px, S = 16, batch 4, three windows,
the 200-patient course phantom split 110 / 30 / 60): the slice task with height-matched
negatives (``two_stage`` stage 1, ``--slice-epochs``), the two-stage model, and end-to-end
models with λ = 0.5 (the design) and λ = 0 warm-started from that slice task
(``--e2e-epochs``, the CNN at 0.1 × the learning rate, the epoch kept by validation mean AUC). The seed changes everything a seed
changes in ``TrainConfig``: the patient split (110 / 30 / 60, stratified), the initialisation,
the slice draws and the augmentation, so each seed's rules are scored again on its own test
patients and every model is compared with them on those.

Printed per seed and model: test AUC ``any``, mean subtype AUC, the paired difference of mean
subtype AUC from the intensity rule and from the position rule (95% bootstrap interval), and
whether the course's bar is met (:func:`ichlib.training.report.meets_bar`); then the spread
(min, median, max) over seeds. The reference measured in the same run is the two rules.

    python benchmarks/bench_seeds.py                 # seeds 0 1 2 (about 15 min a seed on 2 cores)
    python benchmarks/bench_seeds.py --seeds 1 2     # only these
    python benchmarks/bench_seeds.py --models two-stage   # only the two-stage model (about 9 min a seed)
    python benchmarks/bench_seeds.py --quick         # a smoke run on a tiny phantom

SYNTHETIC data: the figures say how stable the recipe is, not how well it detects blood in patients.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path

from _common import (
    BENCH_DIR,
    machine_info,
    machine_line,
    output_path,
    target_row,
    targets_table,
    write_result,
)

import ichlib
from ichlib.course import ensure_synthetic
from ichlib.training.report import meets_bar


def run_seed(seed: int, args, data_dir: Path, out: Path) -> list[dict]:
    """The three models of notebook 04 for one seed; one row each."""
    quick = args.quick
    slice_task = ichlib.TrainConfig(
        data_dir=str(data_dir), out_dir=str(out / f"seed{seed}" / "two_stage"), epochs=args.slice_epochs,
        batch_size=4, img_size=32 if quick else 128, seq_len=4 if quick else 16,
        windows=("brain", "subdural", "bone"), seed=seed, val_fraction=0.15, test_fraction=0.3,
        cache_dir=str(out / "cache"), n_boot=50 if quick else 1000, two_stage=True,
        sequence_epochs=5 if quick else 150, matched_fraction=0.5, progress=False)
    rows = []
    start = time.perf_counter()
    two_stage = ichlib.fit(slice_task)
    rows.append(_row(seed, "two-stage", two_stage.metrics, time.perf_counter() - start))
    for lam in [lam for lam in (0.5, 0.0) if "end-to-end" in args.models]:
        config = dataclasses.replace(slice_task, two_stage=False, aux_weight=lam, epochs=args.e2e_epochs,
                                     init_from=str(two_stage.out_dir / "stage1.pt"), encoder_lr_scale=0.1,
                                     monitor="mean_auc",  # as notebook 04's E2E_MONITOR
                                     out_dir=str(out / f"seed{seed}" / f"end_to_end_aux{lam:g}"))
        start = time.perf_counter()
        result = ichlib.fit(config)
        rows.append(_row(seed, f"end to end, λ = {lam:g}", result.metrics, time.perf_counter() - start))
    return rows


def _row(seed: int, model: str, metrics: dict, seconds: float) -> dict:
    patient = metrics["test"]["patient"]
    row = {"seed": seed, "model": model, "auc_any": patient["labels"]["any"]["auc"],
           "mean_subtype_auc": patient["mean_subtype_auc"], "seconds": round(seconds, 1),
           "bar": meets_bar(metrics)[1], "met": meets_bar(metrics)[0],
           "n_test": metrics["n_patients"]["test"]}
    for rule in ("intensity rule", "position rule"):
        diff = metrics["comparisons"][rule]["mean_subtype"]
        row[f"vs {rule}"] = {"difference": diff["difference"], "ci": diff["ci"]}
        row[f"{rule} mean_subtype_auc"] = metrics["baseline" if rule == "intensity rule" else "position_baseline"][
            "test"]["patient"]["mean_subtype_auc"]
    return row


def _print(rows: list[dict]) -> None:
    print(f"{'seed':>4}  {'model':<20} {'AUC any':>8} {'subtype':>8}  {'Δ vs intensity (95% CI)':<26}"
          f"{'Δ vs position (95% CI)':<26} bar")
    for r in rows:
        cells = []
        for rule in ("intensity rule", "position rule"):
            d = r[f"vs {rule}"]
            ci = d["ci"] or [float("nan")] * 2
            diff = float("nan") if d["difference"] is None else d["difference"]
            cells.append(f"{diff:+.3f} ({ci[0]:+.2f} to {ci[1]:+.2f})")
        auc_any, sub = (float("nan") if v is None else v for v in (r["auc_any"], r["mean_subtype_auc"]))
        print(f"{r['seed']:>4}  {r['model']:<20} {auc_any:>8.3f} {sub:>8.3f}  "
              f"{cells[0]:<26}{cells[1]:<26}{'MET' if r['met'] else 'NOT MET'}")
    print("\nspread over seeds (min / median / max):")
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        for key in ("auc_any", "mean_subtype_auc"):
            values = [float("nan") if r[key] is None else r[key] for r in mine]
            print(f"  {model:<20} {key:<17} {min(values):.3f} / {statistics.median(values):.3f} / "
                  f"{max(values):.3f}  ({len(values)} seeds, bar met in {sum(r['met'] for r in mine)})")
    rule_rows = {r["seed"]: r for r in rows}
    for rule in ("intensity rule", "position rule"):
        values = [float("nan") if r[f"{rule} mean_subtype_auc"] is None else r[f"{rule} mean_subtype_auc"]
                  for r in rule_rows.values()]
        print(f"  {rule:<20} mean_subtype_auc  " + " / ".join(f"{v:.3f}" for v in values)
              + "  (each seed's own test split)")


def main() -> int:
    from _common import base_parser

    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--slice-epochs", type=int, default=6)
    parser.add_argument("--e2e-epochs", type=int, default=2)
    parser.add_argument("--models", nargs="+", choices=("two-stage", "end-to-end"), default=["two-stage", "end-to-end"],
                        help="which of notebook 04's models to train (the slice task is always trained: "
                             "it is the two-stage model's stage 1 and the end-to-end models' start)")
    parser.add_argument("--data", type=Path, default=None,
                        help="the phantom folder (default: the course phantom in data/synthetic, made if absent)")
    args = parser.parse_args()
    if args.quick:
        args.slice_epochs, args.e2e_epochs = 1, 1
    out = args.data_root
    data_dir = args.data or (out / "phantom" if args.quick else BENCH_DIR.parents[1] / "data" / "synthetic")
    ensure_synthetic(data_dir, n_patients=12 if args.quick else 200, size=64 if args.quick else 512)
    rows = []
    for seed in args.seeds:
        rows += run_seed(seed, args, data_dir, out)
        _print(rows)
    machine = machine_info()
    print(machine_line(machine))
    targets = []
    for r in rows:
        if r["model"] == "end to end, λ = 0":
            continue
        lows = [(r[f"vs {rule}"]["ci"] or [float("nan")])[0] for rule in ("intensity rule", "position rule")]
        targets.append(target_row(f"seed {r['seed']} {r['model']}: lower 95% bound of Δ subtype vs the "
                                  "better rule", min(lows), 0.0, "AUC"))
        targets.append(target_row(f"seed {r['seed']} {r['model']}: AUC any", r["auc_any"], 0.90, "AUC"))
    print(targets_table(targets))
    payload = {"benchmark": "seeds", "data": "synthetic", "quick": args.quick, "machine": machine,
               "settings": {"seeds": args.seeds, "slice_epochs": args.slice_epochs, "e2e_epochs": args.e2e_epochs,
                            "models": args.models},
               "rows": rows, "targets": targets}
    print(f"wrote {write_result(output_path(args.out, 'seeds', args.quick), payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
