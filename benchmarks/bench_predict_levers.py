"""Levers for whole-scan prediction: the CNN over every slice of one scan, computed six ways.

Whole-scan prediction runs the CNN once per slice (40 slices of a 512² scan at 256 px in the
full run), which is most of ``ichlib predict``'s time. This script measures what each lever
buys on this CPU, and what it costs in agreement, in one process:

- reference: fp32 eager, contiguous tensors, all slices in one batch;
- channels_last: fp32 in channels-last format (``ichlib predict --fp32``, and its default
  where bf16 does not pay);
- channels_last, chunks of 8: the same in batches of 8 slices (smaller working set);
- bf16: autocast to bfloat16, channels-last (``amp="bf16"`` / ``ICHLIB_AMP=bf16``);
- int8: post-training static quantization of the CNN with ``torch.ao`` FX, x86 backend,
  calibrated on a *different* scan of the same phantom;
- onnxruntime: the CNN exported to ONNX and run by onnxruntime fp32 (only where
  ``onnxruntime`` is installed: ``pip install onnxruntime onnx``).

The checkpoint has seeded random weights whose BatchNorm statistics come from the scans
(as in ``bench_predict.py``), so activations have realistic ranges; the probabilities mean
nothing, their agreement does. Agreement is the largest patient-level ``|Δp|`` against the
reference after the same fp32 sequence half (BiLSTM over the covering samplings, max).

    python benchmarks/bench_predict_levers.py            # full run
    python benchmarks/bench_predict_levers.py --quick    # smoke run
"""

from __future__ import annotations

import copy
import io
import sys
import warnings
from collections.abc import Callable

import _common as C

NAME = "predict_levers"
WARM_TARGET_S = 0.5
AGREEMENT_TARGET = 0.01


def settings(quick: bool, repeats: int) -> dict:
    """Scan and model sizes for a full or a quick run."""
    if quick:
        return {"scan_size": 96, "n_slices": 10, "img_size": 64, "seq_len": 4, "repeats": 2}
    return {"scan_size": 512, "n_slices": 40, "img_size": 256, "seq_len": 16, "repeats": repeats}


def _int8_encoder(encoder, calibration):
    """The encoder quantized to int8 (x86 backend), calibrated on ``calibration``."""
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao points to torchao; the API still works
        prepared = prepare_fx(copy.deepcopy(encoder).eval(), get_default_qconfig_mapping("x86"),
                              example_inputs=(calibration[:2],))
        with torch.inference_mode():
            prepared(calibration)
        return convert_fx(prepared)


def _onnx_encoder(encoder, example) -> Callable | None:
    """The encoder as an onnxruntime session (None where onnxruntime is not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder, (example[:2],), buffer, input_names=["x"], output_names=["e"],
                          dynamic_axes={"x": {0: "n"}, "e": {0: "n"}}, opset_version=17, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


def measure(s: dict, scans: list[str]) -> list[dict]:
    """Time each lever on ``scans[0]`` (``scans[1]`` calibrates int8); one row per lever."""
    import numpy as np
    import torch
    from _reference import reference_load, reference_preprocess

    from ichlib.preprocess.dataset import PreprocessConfig
    from ichlib.preprocess.sampling import covering_indices

    config = PreprocessConfig(windows="brain", img_size=s["img_size"], seq_len=s["seq_len"])
    x, calibration = (reference_preprocess(reference_load(p), config) for p in scans[:2])
    model = C.model_with_scan_statistics(config.n_channels, torch.cat([x, calibration]))
    samplings = covering_indices(x.shape[0], config.seq_len)

    def probabilities(embeddings: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            logits = model.sequence_logits(embeddings.float()[torch.from_numpy(samplings)])
        return torch.sigmoid(logits.amax(dim=0)).numpy()

    contiguous = model.encoder
    cl = copy.deepcopy(model.encoder).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def bf16(inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return cl(inputs)

    levers: dict[str, Callable[[], torch.Tensor]] = {
        "reference (fp32, contiguous)": lambda: contiguous(x),
        "channels_last fp32": lambda: cl(x_cl),
        "channels_last fp32, chunks of 8": lambda: torch.cat([cl(x_cl[i:i + 8]) for i in range(0, len(x), 8)]),
        "bf16 autocast": lambda: bf16(x_cl),
    }
    int8 = _int8_encoder(model.encoder, calibration)
    levers["int8 (torch.ao x86)"] = lambda: int8(x)
    onnx = _onnx_encoder(model.encoder, x)
    if onnx is not None:
        levers["onnxruntime fp32"] = lambda: onnx(x)

    rows, reference = [], None
    for name, run in levers.items():
        with torch.inference_mode():
            times = C.time_calls(run, repeats=s["repeats"], warmup=1)
            p = probabilities(run())
        reference = p if reference is None else reference
        rows.append({"lever": name, "cnn_s": C.median(times), "times_s": times,
                     "max_abs_dp": float(np.abs(p - reference).max())})
    for row in rows:
        row["speedup"] = rows[0]["cnn_s"] / row["cnn_s"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per lever (default 7)")
    args = parser.parse_args(argv)
    s = settings(args.quick, args.repeats)
    data_dir = C.synthetic_dataset(args.data_root, 2, s["scan_size"], (s["n_slices"], s["n_slices"]))
    scans = [str(p) for p in sorted((data_dir / "ct_scans").glob("*.nii"))]
    machine = C.machine_info()
    print(f"measuring {s['n_slices']} slices at {s['img_size']}² ...", flush=True)
    rows = measure(s, scans)
    print(f"\nThe CNN over every slice of one {s['n_slices']}-slice {s['scan_size']}² scan at "
          f"{s['img_size']}² ({'QUICK smoke run' if args.quick else 'full run'}; synthetic data, "
          "untrained weights)")
    print(C.machine_line(machine))
    print(C.format_table(rows, [("lever", "lever", ""), ("cnn_s", "CNN s", ".3f"),
                                ("speedup", "x reference", ".2f"), ("max_abs_dp", "max |Δp|", ".4f")]))
    agreeing = [r for r in rows if r["max_abs_dp"] <= AGREEMENT_TARGET]
    best = min(agreeing, key=lambda r: r["cnn_s"])
    targets = [C.target_row(f"fastest lever within abs Δp {AGREEMENT_TARGET}: {best['lever']}, CNN s",
                            best["cnn_s"], WARM_TARGET_S, "s", higher_is_better=False)]
    return C.finish(NAME, args, machine, s, targets, results=rows)


if __name__ == "__main__":
    sys.exit(main())
