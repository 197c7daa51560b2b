"""The ``ichlib`` command line: ``check``, ``synth``, ``train``, ``predict``.

Each subcommand parses its arguments here and calls one library function, so everything
the command line does is also available from Python.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from ichlib.errors import IchlibError


def _cmd_check(args: argparse.Namespace) -> int:
    from ichlib.check import check_dataset

    report = check_dataset(args.data_dir, deep=not args.quick)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.summary())
    return 0 if report.ok else 1


def _cmd_synth(args: argparse.Namespace) -> int:
    from ichlib.phantom import write_synthetic_ct_ich

    start = time.perf_counter()
    out = write_synthetic_ct_ich(args.out_dir, n_patients=args.patients, size=args.size,
                                 seed=args.seed, workers=args.workers)
    print(f"Wrote {args.patients} synthetic patients ({args.size}x{args.size}) to {out} "
          f"in {time.perf_counter() - start:.1f} s. SYNTHETIC data, not patient data.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="ichlib", description="ICH detection on head CT with a CNN + BiLSTM (research code; "
                                   "not a medical device).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate a CT-ICH folder and list every problem")
    p.add_argument("data_dir", help="folder in the PhysioNet CT-ICH layout")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.add_argument("--quick", action="store_true", help="headers only; do not read the voxels")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("synth", help="write the synthetic head-CT phantom in the CT-ICH layout")
    p.add_argument("out_dir")
    p.add_argument("--patients", type=int, default=75)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(func=_cmd_synth)

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
