"""Preprocessing throughput: NIfTI to windowed, resized ``[S, C, H, W]`` tensors, in scans/s.

On 75 synthetic 512² scans of about 40 slices (the design's 256², S = 16, brain window):

- reference: nibabel ``get_fdata`` (float64), every slice resized and windowed, then S
  slices sampled (:func:`_reference.reference_scan`), on the first ``--ref-scans`` scans;
- cache build: :class:`ichlib.preprocess.cache.VolumeCache` turns all 75 scans into float16
  resized volumes on disk, from an empty cache folder (the one-time cost);
- cache read: one epoch of :class:`ichlib.ScanDataset` items from the built cache (read S
  slices, window, sample), as every later training epoch does; median of ``--epochs``;
- MONAI: ``LoadImage -> EnsureChannelFirst -> Resize(anti_aliasing) -> ScaleIntensityRange``
  then S slices, the chain a MONAI user would write (only when ``monai`` is installed:
  ``pip install -e ".[bench]"``).

Each path runs in its own process. The scans are read through the page cache (they were
just written or read), so disk speed is not measured. Each path's output on the first
scan is compared with the reference's (max |difference| of window intensities in [0, 1]).

    python benchmarks/bench_preprocess.py            # full run
    python benchmarks/bench_preprocess.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

import _common as C

NAME = "preprocess"
BUILD_TARGET_S = 30.0


def settings(args: argparse.Namespace) -> dict:
    """Data sizes for a full or a quick run."""
    if args.quick:
        return {"scan_size": 96, "n_scans": 4, "n_slices": [10, 12], "img_size": 64, "seq_len": 4,
                "windows": "brain", "ref_scans": 3, "epochs": 2}
    return {"scan_size": 512, "n_scans": 75, "n_slices": [36, 44], "img_size": 256, "seq_len": 16,
            "windows": "brain", "ref_scans": args.ref_scans, "epochs": args.epochs}


# --- worker ----------------------------------------------------------------------------

def measure(path: str, s: dict, data_dir: str, cache_dir: str) -> dict:
    """Time one path; returns scans/s and its max |difference| from the reference."""
    from _reference import reference_scan

    from ichlib.io.ctich import read_ct_ich
    from ichlib.preprocess.dataset import PreprocessConfig

    data = read_ct_ich(data_dir)
    config = PreprocessConfig(windows=s["windows"], img_size=s["img_size"], seq_len=s["seq_len"])
    scans = [str(data.scans[pid]) for pid in data.patient_ids]
    result: dict = {"path": path}
    if path == "reference":
        per_scan = C.time_each(lambda p: reference_scan(p, config), scans[1:s["ref_scans"] + 2])
        result.update(n_scans=len(per_scan), scans_per_s=1.0 / C.median(per_scan),
                      total_s=sum(per_scan), max_abs_diff=0.0, mean_abs_diff=0.0)
    elif path == "cache_build":
        shutil.rmtree(cache_dir, ignore_errors=True)
        result.update(_cache_build(data, config, cache_dir))
    elif path == "cache_read":
        result.update(_cache_read(data, config, cache_dir, s["epochs"]))
    elif path == "monai":
        result.update(_monai(scans, config, s["ref_scans"]))
    else:
        raise ValueError(path)
    if path != "reference":
        diff = (result.pop("first_x").float() - reference_scan(scans[0], config)).abs()
        result.update(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()))
    return result


def _cache_build(data, config, cache_dir: str) -> dict:
    from ichlib.preprocess.cache import VolumeCache
    from ichlib.preprocess.dataset import ScanDataset

    cache = VolumeCache(cache_dir, config.img_size)
    start = time.perf_counter()
    for pid in data.patient_ids:
        cache.get(data.scans[pid])
    total = time.perf_counter() - start
    first = ScanDataset(data, data.patient_ids[:1], config, cache_dir)[0]["x"]
    return {"n_scans": len(data.patient_ids), "total_s": total,
            "scans_per_s": len(data.patient_ids) / total, "first_x": first}


def _cache_read(data, config, cache_dir: str, epochs: int) -> dict:
    from ichlib.preprocess.dataset import ScanDataset

    dataset = ScanDataset(data, data.patient_ids, config, cache_dir)
    if dataset.warm_cache():
        raise RuntimeError("the cache could not be built for every scan")

    def epoch() -> None:
        for i in range(len(dataset)):
            dataset[i]

    times = C.time_calls(epoch, repeats=epochs, warmup=1)
    return {"n_scans": len(dataset), "total_s": C.median(times),
            "scans_per_s": len(dataset) / C.median(times), "first_x": dataset[0]["x"]}


def monai_chain(config):
    """MONAI's equivalent of ichlib's preprocessing: path -> ``[S, C, H, W]`` float32 tensor."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Resize, ScaleIntensityRange

    from ichlib.preprocess.sampling import uniform_indices
    from ichlib.preprocess.windowing import resolve_windows

    load = Compose([LoadImage(image_only=True, reader="NibabelReader"), EnsureChannelFirst(),
                    Resize(spatial_size=(config.img_size, config.img_size, -1), mode="trilinear",
                           anti_aliasing=True)])
    windows = [ScaleIntensityRange(a_min=c - w / 2, a_max=c + w / 2, b_min=0.0, b_max=1.0, clip=True)
               for c, w in resolve_windows(config.windows)]

    def run(path: str) -> torch.Tensor:
        vol = load(path)                       # [1, X, Y, Z]
        x = torch.cat([torch.as_tensor(win(vol)) for win in windows])  # [C, X, Y, Z]
        idx = torch.from_numpy(uniform_indices(x.shape[-1], config.seq_len))
        return x[..., idx].permute(3, 0, 2, 1).float().contiguous()   # [S, C, Y, X]

    return run


def _monai(scans: list[str], config, n: int) -> dict:
    run = monai_chain(config)
    per_scan = C.time_each(run, scans[1:n + 2])
    import monai

    return {"n_scans": len(per_scan), "scans_per_s": 1.0 / C.median(per_scan),
            "total_s": sum(per_scan), "first_x": run(scans[0]), "monai": monai.__version__}


# --- parent ----------------------------------------------------------------------------

def have_monai() -> bool:
    """Whether MONAI is importable (the optional ``bench`` extra)."""
    import importlib.util

    return importlib.util.find_spec("monai") is not None


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--ref-scans", type=int, default=20,
                        help="scans timed for the reference and MONAI (default 20)")
    parser.add_argument("--epochs", type=int, default=3, help="cache-read epochs timed (default 3)")
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        C.emit([measure(p, spec["settings"], spec["data_dir"], spec["cache_dir"])
                for p in spec["paths"]])
        return 0

    s = settings(args)
    data_dir = C.synthetic_dataset(args.data_root, s["n_scans"], s["scan_size"], tuple(s["n_slices"]))
    cache_dir = args.data_root / "cache-preprocess"
    machine = C.machine_info()
    paths = ["reference", "cache_build", "cache_read"] + (["monai"] if have_monai() else [])
    groups = [paths] if args.quick else [[p] for p in paths]
    results = []
    for group in groups:
        print(f"measuring {', '.join(group)} ...", flush=True)
        spec = {"paths": group, "settings": s, "data_dir": str(data_dir), "cache_dir": str(cache_dir)}
        out, proc = C.run_worker(__file__, ["--worker", json.dumps(spec)])
        results += [{**r, **proc} for r in out]
    ref = next(r for r in results if r["path"] == "reference")
    for r in results:
        r["ratio_to_reference"] = r["scans_per_s"] / ref["scans_per_s"]
    build = next(r for r in results if r["path"] == "cache_build")
    targets = [C.target_row(f"cache build for {s['n_scans']} scans", build["total_s"], BUILD_TARGET_S,
                            "s", higher_is_better=False)]

    print(f"\nPreprocessing, {s['scan_size']}² scans of {s['n_slices'][0]}-{s['n_slices'][1]} slices "
          f"-> {s['img_size']}², S = {s['seq_len']}, {s['windows']} "
          f"({'QUICK smoke run' if args.quick else 'full run'}; synthetic data)")
    print(C.machine_line(machine))
    print(C.format_table(results, [
        ("path", "path", ""), ("n_scans", "scans", "d"), ("scans_per_s", "scans/s", ".2f"),
        ("ratio_to_reference", "x reference", ".2f"), ("total_s", "seconds", ".2f"),
        ("max_abs_diff", "max |diff|", ".4f"), ("mean_abs_diff", "mean |diff|", ".5f"),
        ("peak_rss_mb", "peak RSS MB", ".0f")]))
    print("|diff|: window intensities in [0, 1] on the first scan, against the reference. The cache "
          "stores float16 HU; MONAI smooths with a Gaussian before resizing, which differs from "
          "ichlib's antialiased bilinear resize at sharp edges.")
    if not have_monai():
        print("MONAI is not installed, so its row is missing (pip install -e '.[bench]').")
    return C.finish(NAME, args, machine, s, targets,
                    "The loader's share of training step time is measured by bench_train.py.",
                    results=results, monai_installed=have_monai())

if __name__ == "__main__":
    sys.exit(main())
