"""The benchmark scripts run end to end with --quick and write sane JSON (no timing checks).

The five scripts run at once, as separate processes, into a temporary folder; each test
then checks one script's JSON. Benchmarks are not timed tests: only the fields, their
signs, the ratios' arithmetic and the agreement of the probabilities are checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("bench_train", "bench_preprocess", "bench_predict", "bench_predict_levers", "bench_gpu")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, dict]]:
    """Run every script with --quick in parallel; returns ``{name: (process, JSON)}``."""
    tmp = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    procs = {}
    for name in SCRIPTS:
        cmd = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick",
               "--data-root", str(tmp / name), "--out", str(tmp / f"{name}.json")]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, env=env, cwd=tmp)
    out = {}
    for name, proc in procs.items():
        stdout, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} failed:\n{stdout}"
        out[name] = (stdout, json.loads((tmp / f"{name}.json").read_text()))
    return out


def _check_targets(result: dict) -> None:
    for target in result["targets"]:
        assert target["status"] in ("PASS", "MISS", "n/a"), target


def test_train_benchmark(runs):
    stdout, result = runs["bench_train"]
    assert result["data"] == "synthetic" and result["quick"] is True
    assert {(r["path"], r["windows"]) for r in result["results"]} == {
        (p, w) for p in ("reference", "fast") for w in ("brain", "brain,subdural,soft")} | {("fast_bf16", "brain")}
    for r in result["results"]:
        assert r["slices_per_s"] > 0 and r["median_step_s"] > 0 and r["peak_rss_mb"] > 0
        assert 0 <= r["data_wait_share"] <= 1
        assert r["precision"] in ("fp32", "bfloat16")
    for comp in result["comparisons"]:
        assert comp["ratio"] == pytest.approx(comp["fast_slices_per_s"] / comp["reference_slices_per_s"])
    assert {r["precision"] for r in result["results"] if r["path"] == "fast_bf16"} == {"bfloat16"}
    precision = result["precision"]
    assert precision["bf16_over_default"] == pytest.approx(precision["bf16_slices_per_s"]
                                                           / precision["default_slices_per_s"])
    _check_targets(result)
    assert "fast / reference" in stdout and ("PASS" in stdout or "MISS" in stdout)


def test_preprocess_benchmark(runs):
    stdout, result = runs["bench_preprocess"]
    rows = {r["path"]: r for r in result["results"]}
    assert {"reference", "cache_build", "cache_read"} <= set(rows)
    assert ("monai" in rows) == result["monai_installed"]
    ref = rows["reference"]["scans_per_s"]
    for r in rows.values():
        assert r["scans_per_s"] > 0 and r["n_scans"] > 0
        assert r["ratio_to_reference"] == pytest.approx(r["scans_per_s"] / ref)
    # The cache stores float16 HU: windowed values stay within a few float16 steps of the reference.
    for path in ("cache_build", "cache_read"):
        assert rows[path]["max_abs_diff"] < 0.02
    # MONAI smooths differently at edges, but the images agree on average.
    if "monai" in rows:
        assert rows["monai"]["mean_abs_diff"] < 0.02
    _check_targets(result)


def test_predict_benchmark(runs):
    stdout, result = runs["bench_predict"]
    rows = {r["path"]: r for r in result["results"]}
    assert set(rows) == {"reference", "fast", "fast_fp32", "bf16_forced"}
    for r in rows.values():
        assert r["warm_s"] > 0 and len(r["probabilities"]) == 6
        assert all(0.0 <= p <= 1.0 for p in r["probabilities"])
        assert r["speedup_vs_reference"] == pytest.approx(rows["reference"]["warm_s"] / r["warm_s"])
    assert result["cold"]["fast_cold_s"] > 0 and result["cold"]["reference_cold_s"] > 0
    dp = result["max_abs_dp"]
    assert dp["fp32_vs_reference"] < 1e-4     # the same function computed two ways
    assert dp["cli_vs_warm_fp32"] < 1e-4      # ichlib predict --fp32 prints what the Predictor gives
    assert result["cold"]["help_s"] > 0 and len(result["cold"]["help_times_s"]) == result["settings"]["cold_repeats"]
    assert dp["bf16_vs_fp32"] < 0.05          # bf16 rounding, not a different model
    assert rows["reference"]["precision"] == rows["fast_fp32"]["precision"] == "fp32"
    assert rows["bf16_forced"]["precision"] == "bfloat16"
    assert rows["fast"]["precision"] in ("fp32", "bfloat16")
    if rows["fast"]["precision"] == "fp32":
        assert dp["default_vs_fp32"] < 1e-6    # where bf16 does not pay, the default is fp32
    _check_targets(result)


def test_predict_levers_benchmark(runs):
    stdout, result = runs["bench_predict_levers"]
    rows = {r["lever"]: r for r in result["results"]}
    expected = {"reference (fp32, contiguous)", "channels_last fp32", "channels_last fp32, chunks of 8",
                "bf16 autocast", "int8 (torch.ao x86)"}
    assert expected <= set(rows) and set(rows) - expected <= {"onnxruntime fp32"}
    for r in rows.values():
        assert r["cnn_s"] > 0 and r["speedup"] == pytest.approx(rows["reference (fp32, contiguous)"]["cnn_s"] / r["cnn_s"])
    assert rows["reference (fp32, contiguous)"]["max_abs_dp"] == 0.0
    # fp32 in another memory format or batch split is the same function: float rounding only.
    assert rows["channels_last fp32"]["max_abs_dp"] < 1e-4
    assert rows["channels_last fp32, chunks of 8"]["max_abs_dp"] < 1e-4
    assert rows["bf16 autocast"]["max_abs_dp"] < 0.05
    assert "x reference" in stdout and "max |Δp|" in stdout
    _check_targets(result)


def test_gpu_benchmark(runs):
    stdout, result = runs["bench_gpu"]
    if result["status"] == "skipped":
        assert "No CUDA device" in stdout and "No CUDA device" in result["reason"]
        return
    assert result["device"]
    train = [r for r in result["rows"] if r.get("kind") == "train" and "error" not in r]
    assert train and all(r["slices_per_s"] > 0 and 0 <= r["data_wait_pct"] <= 100 for r in train)
    _check_targets(result)
