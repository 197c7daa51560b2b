"""Prediction with a tiny trained checkpoint, including a broken scan among good ones."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ichlib.device
from ichlib.checkpoint import load_checkpoint, model_from_checkpoint
from ichlib.cli import main
from ichlib.io.load import load_volume
from ichlib.labels import LABELS
from ichlib.model import CNNBiLSTM
from ichlib.predict import (
    SYNTHETIC_NOTE,
    THRESHOLD_NOTE,
    Predictor,
    ScanPrediction,
    format_prediction,
    predict_files,
    predict_scan,
)
from ichlib.preprocess.dataset import PreprocessConfig
from ichlib.preprocess.sampling import uniform_indices
from ichlib.training.config import TrainConfig
from ichlib.training.fit import fit
from tests.conftest import labels_with, write_ct_ich

# Numbers that go through amp="auto": CI runs these again under ICHLIB_AMP=bf16.
pytestmark = pytest.mark.amp


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch run on eight tiny synthetic-labelled patients."""
    root = tmp_path_factory.mktemp("predict")
    labels = {49 + i: labels_with(5 + i % 3, (i % 5) if i % 2 else None, 1, 3) for i in range(8)}
    data = write_ct_ich(root / "ds", labels, size=32)
    (data / "synthetic.json").write_text('{"synthetic": true}')
    config = TrainConfig(data_dir=str(data), out_dir=str(root / "run"), epochs=1, batch_size=4,
                         img_size=32, seq_len=6, lstm_hidden=16, val_fraction=0.25,
                         test_fraction=0.25, n_boot=10, progress=False,
                         cache_dir=str(root / "cache"))
    return fit(config), data


@pytest.fixture
def scans(trained, tmp_path) -> tuple[list[Path], Path]:
    _, data = trained
    good = sorted((data / "ct_scans").glob("*.nii"))[:3]
    bad = tmp_path / "broken.nii"
    bad.write_bytes(good[0].read_bytes()[:200])  # shorter than a NIfTI header
    return good, bad


def test_a_broken_scan_does_not_stop_the_others(trained, scans):
    run, _ = trained
    good, bad = scans
    predictions, errors = predict_files(run.best_path, [good[0], bad, good[1]], device="cpu")
    assert [p.path for p in predictions] == [str(good[0]), str(good[1])]
    assert len(errors) == 1 and errors[0].path == str(bad)
    assert str(bad) in errors[0].error and "truncated" in errors[0].error


def test_prediction_contents(trained, scans):
    run, _ = trained
    good, _ = scans
    ckpt = load_checkpoint(run.best_path)
    prediction = Predictor(ckpt, device="cpu")(good[2])
    assert list(prediction.probabilities) == list(LABELS)
    assert all(0.0 <= p <= 1.0 for p in prediction.probabilities.values())
    n = load_volume(good[2]).n_slices
    assert prediction.slice_numbers == list(range(1, n + 1))  # every slice, not only S = 6 of them
    assert prediction.slice_probabilities.shape == (n, 6)
    assert prediction.thresholds == ckpt["thresholds"] and set(prediction.positive) == set(LABELS)
    assert prediction.trained_on == "synthetic"
    table = prediction.slice_table()
    assert list(table.columns) == ["SliceNumber", *LABELS]
    doc = prediction.to_dict()
    json.dumps(doc)
    assert doc["slices"][0]["SliceNumber"] == 1
    text = format_prediction(prediction)
    assert "SYNTHETIC" in text and "intraventricular" in text and "SliceNumber" not in text
    assert "SliceNumber" in format_prediction(prediction, slices=True)


def test_the_text_patient_table_reads_back_with_its_validation_thresholds(trained, scans):
    run, _ = trained
    good, _ = scans
    prediction = Predictor(run.best_path, device="cpu")(good[0])
    lines = format_prediction(prediction).splitlines()
    assert lines[0] == str(good[0])
    assert lines[1].split() == ["label", "probability", "threshold*", "call"]
    rows = [line.split() for line in lines[2:2 + len(LABELS)]]
    assert [row[0] for row in rows] == list(LABELS)
    np.testing.assert_allclose([float(row[1]) for row in rows],
                               [prediction.probabilities[k] for k in LABELS], atol=5e-5)
    np.testing.assert_allclose([float(row[2]) for row in rows],
                               [prediction.thresholds[k] for k in LABELS], atol=5e-5)
    assert [row[3] == "POSITIVE" for row in rows] == [prediction.positive[k] for k in LABELS]
    assert {row[3] for row in rows} <= {"POSITIVE", "negative"}
    assert lines[8] == "  " + THRESHOLD_NOTE and "validation split" in lines[8] and "Youden" in lines[8]
    assert lines[9] == "  " + SYNTHETIC_NOTE and "no clinical meaning" in lines[9]
    n = len(prediction.slice_numbers)
    assert lines[10:] == [f"  per-slice probabilities of the {n} slices: not shown "
                          "(ichlib predict --slices shows them)"]


def _hand_made(thresholds: dict[str, float], trained_on: str = "synthetic") -> ScanPrediction:
    probabilities = dict(zip(LABELS, [0.9, 0.03, 0.035, 0.5, 0.2, 0.0], strict=True))
    return ScanPrediction(path="scan.nii", probabilities=probabilities, slice_numbers=[1, 2],
                          slice_probabilities=np.zeros((2, 6)), thresholds=thresholds,
                          trained_on=trained_on)


def test_the_call_is_probability_at_or_above_the_threshold_and_each_threshold_is_shown():
    thresholds = {"any": 0.5, "intraparenchymal": 0.035, "intraventricular": 0.035,
                  "subarachnoid": 0.6, "epidural": 0.1}  # no threshold for subdural
    lines = format_prediction(_hand_made(thresholds)).splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:8]}
    assert rows == {"any": ["0.9000", "0.5000", "POSITIVE"],
                    "intraparenchymal": ["0.0300", "0.0350", "negative"],
                    "intraventricular": ["0.0350", "0.0350", "POSITIVE"],  # equal: positive
                    "subarachnoid": ["0.5000", "0.6000", "negative"],
                    "epidural": ["0.2000", "0.1000", "POSITIVE"],
                    "subdural": ["0.0000", "n/a", "-"]}
    # probability and threshold right-aligned under their headers
    ends = [[m.end() for m in re.finditer(r"\S+", line)][1:3] for line in lines[1:8]]
    assert all(e == ends[0] for e in ends), ends


def test_the_notes_follow_the_checkpoint():
    real = format_prediction(_hand_made({}, trained_on="real"))
    assert "SYNTHETIC" not in real and "not a medical device" in real
    assert "the checkpoint holds no thresholds" in real and THRESHOLD_NOTE not in real
    assert "POSITIVE" not in real.replace("POSITIVE or negative", "")
    synthetic = format_prediction(_hand_made(dict.fromkeys(LABELS, 0.5)))
    assert SYNTHETIC_NOTE in synthetic and THRESHOLD_NOTE in synthetic


def test_the_text_slice_table_reads_back_as_the_probabilities(trained, scans):
    run, _ = trained
    good, _ = scans
    prediction = Predictor(run.best_path, device="cpu")(good[0])
    text = format_prediction(prediction, slices=True).splitlines()
    start = text.index("  per-slice probability (slice head):") + 1
    header, *rows = text[start:]
    assert header.split() == ["SliceNumber", *LABELS]
    assert len({len(line) for line in [header, *rows]}) == 1  # right-aligned columns
    table = np.array([[float(v) for v in row.split()] for row in rows])
    assert table[:, 0].tolist() == prediction.slice_numbers
    np.testing.assert_allclose(table[:, 1:], prediction.slice_probabilities, atol=5e-5)


def test_cli_predict_imports_neither_pandas_nor_the_training_stack(trained, scans):
    run, _ = trained
    good, _ = scans
    code = ("import sys; from ichlib.cli import main; status = main(sys.argv[1:]); "
            "print(status, [m for m in ('pandas', 'sklearn', 'matplotlib', 'ichlib.training') "
            "if m in sys.modules])")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code, "predict", "--checkpoint", str(run.best_path),
                           str(good[0])], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.splitlines()[-1] == "0 []", done.stderr


def test_matches_the_test_probabilities_of_the_run(trained):
    run, data = trained
    model, preprocess = model_from_checkpoint(load_checkpoint(run.best_path))
    for pid, expected in run.metrics["test"]["probabilities"].items():
        got = predict_scan(model, preprocess, data / "ct_scans" / f"{pid}.nii", amp="off")
        # The run read float16-cached volumes; prediction reads the NIfTI itself.
        np.testing.assert_allclose([got.probabilities[k] for k in LABELS],
                                   [expected[k] for k in LABELS], atol=2e-3)


def test_path_volume_and_array_inputs_agree(trained, scans):
    run, _ = trained
    good, _ = scans
    model, preprocess = model_from_checkpoint(load_checkpoint(run.best_path))
    volume = load_volume(good[0])
    results = [predict_scan(model, preprocess, item, amp="off") for item in (good[0], volume, volume.hu)]
    for other in results[1:]:
        assert other.probabilities == results[0].probabilities
    assert results[1].path == str(good[0]) and results[2].path is None


def test_bf16_stays_close_to_float32(trained, scans):
    run, _ = trained
    good, _ = scans
    model, preprocess = model_from_checkpoint(load_checkpoint(run.best_path))
    for path in good:
        fp32 = predict_scan(model, preprocess, path, amp="off")
        bf16 = predict_scan(model, preprocess, path, amp="bf16")
        delta = max(abs(fp32.probabilities[k] - bf16.probabilities[k]) for k in LABELS)
        assert delta < 0.05


def test_cli_predict_reports_the_bad_scan_and_fails(trained, scans, capsys):
    run, _ = trained
    good, bad = scans
    status = main(["predict", "--checkpoint", str(run.best_path), str(good[0]), str(bad), str(good[1])])
    out, err = capsys.readouterr()
    assert status != 0
    assert str(good[0]) in out and str(good[1]) in out and "subdural" in out
    assert out.count("threshold*") == 2 and out.count(THRESHOLD_NOTE) == 2 and "SliceNumber" not in out
    assert str(bad) not in out
    assert str(bad) in err and "error" in err


def test_cli_predict_slices_adds_one_row_per_slice(trained, scans, capsys):
    run, _ = trained
    good, _ = scans
    argv = ["predict", "--checkpoint", str(run.best_path), "--fp32", str(good[0])]
    assert main(argv) == 0
    plain = capsys.readouterr().out.strip().splitlines()
    assert main([*argv, "--slices"]) == 0
    with_slices = capsys.readouterr().out.strip().splitlines()
    n = load_volume(good[0]).n_slices
    assert len(plain) == 11 and plain[:10] == with_slices[:10] and "not shown" in plain[10]
    assert with_slices[10] == "  per-slice probability (slice head):"
    assert with_slices[11].split() == ["SliceNumber", *LABELS]
    assert [int(line.split()[0]) for line in with_slices[12:]] == list(range(1, n + 1))


def test_cli_predict_json(trained, scans, capsys):
    run, _ = trained
    good, _ = scans
    status = main(["predict", "--checkpoint", str(run.best_path), "--json", "--fp32", *map(str, good)])
    out, _ = capsys.readouterr()
    assert status == 0
    doc = json.loads(out)
    assert [p["path"] for p in doc["predictions"]] == list(map(str, good)) and doc["errors"] == []
    assert set(doc["predictions"][0]["probabilities"]) == set(LABELS)
    assert {"SliceNumber", *LABELS} == set(doc["predictions"][0]["slices"][0])


def test_cli_predict_with_a_bad_checkpoint(scans, tmp_path, capsys):
    good, _ = scans
    fake = tmp_path / "best.pt"
    fake.write_text("not a checkpoint")
    status = main(["predict", "--checkpoint", str(fake), str(good[0])])
    _, err = capsys.readouterr()
    assert status == 1 and str(fake) in err


def test_cli_predict_cam_writes_a_figure_and_nifti_per_scan(trained, scans, tmp_path, capsys):
    run, _ = trained
    good, _ = scans
    out = tmp_path / "cam"
    status = main(["predict", "--checkpoint", str(run.best_path), "--cam", str(out), "--cam-top-k", "2",
                   str(good[0])])
    assert status == 0
    pngs, niftis = sorted(out.glob("*.png")), sorted(out.glob("*.nii.gz"))
    assert len(pngs) == 1 and len(niftis) == 1
    assert pngs[0].read_bytes()[:4] == b"\x89PNG" and pngs[0].stat().st_size > 5000
    assert "Grad-CAM:" in capsys.readouterr().err


def test_predict_a_dicom_series(trained, tmp_path):
    from ichlib.io.rsna import read_rsna
    from ichlib.synthetic.rsna import write_synthetic_rsna

    run, _ = trained
    root = write_synthetic_rsna(tmp_path / "rsna", n_patients=1, size=32, n_slices_range=(8, 9),
                                duplicate_rows=0, workers=1)
    data = read_rsna(root, cache_dir=tmp_path / "cache")
    series = [data.scans[sid] for sid in data.patient_ids]
    predictions, errors = predict_files(run.best_path, series, device="cpu")
    assert errors == [] and len(predictions) == len(series) == 2
    for prediction, sid in zip(predictions, data.patient_ids):
        assert set(prediction.probabilities) == set(LABELS)
        assert prediction.slice_numbers[0] == 1 and prediction.slice_numbers[-1] == data.patients.loc[sid, "n_slices"]


class IntensityToy(CNNBiLSTM):
    """A stand-in for a trained model: each slice's patient-level logit is
    ``20 * (brightest windowed pixel - 0.5)``, pooled by max over the sequence read."""

    def __init__(self) -> None:
        super().__init__(in_channels=1, lstm_hidden=4, pooling="max")

    def embed(self, slices):
        return slices.amax(dim=(1, 2, 3))[:, None].repeat(1, self.feature_dim)

    def sequence_logits(self, embeddings):
        per_slice = 20.0 * (embeddings[..., :1] - 0.5)  # [B, S, 1]
        return per_slice.amax(dim=1).repeat(1, 6)


@pytest.mark.parametrize("n_slices", [5, 16, 17, 28, 43, 58])
def test_blood_on_one_slice_anywhere_reaches_the_scan_decision(n_slices):
    config = PreprocessConfig(windows=("brain",), img_size=16, seq_len=16)
    model = IntensityToy().eval()
    missed_by_one_sampling = []
    for k in range(n_slices):
        hu = np.full((n_slices, 16, 16), 20.0, dtype=np.float32)  # brain window: 0.25
        hu[k, 6:10, 6:10] = 70.0  # one hyperdense spot on slice k alone: 0.875
        prediction = predict_scan(model, config, hu, device="cpu", amp="off")
        assert prediction.probabilities["any"] > 0.99, (n_slices, k)
        assert prediction.slice_numbers == list(range(1, n_slices + 1))
        if k not in uniform_indices(n_slices, 16):
            missed_by_one_sampling.append(k)
    # with more slices than S, a single uniform sampling would not have read every one
    assert (len(missed_by_one_sampling) > 0) == (n_slices > 16)
    negative = predict_scan(model, config, np.full((n_slices, 16, 16), 20.0, dtype=np.float32),
                            device="cpu", amp="off")
    assert negative.probabilities["any"] < 0.01


# --- the first prediction on a CPU whose bf16 speed was never measured ------------------------

def _fresh_avx512_bf16_cpu(monkeypatch, cache: Path, fake_forward: bool = True) -> dict[str, list]:
    """A CPU with AVX512-BF16 and no AMX whose precision was never measured, caching in
    ``cache``. Returns the dtypes each kind of measurement was run with."""
    calls: dict[str, list] = {"training": [], "inference": []}
    real_forward = ichlib.device._time_forward_pass

    def training_step(dtype, repeats: int = 3) -> float:
        calls["training"].append(dtype)
        raise AssertionError("prediction timed a training step")

    def forward(dtype, repeats: int = 3) -> float:
        calls["inference"].append(dtype)
        return (0.1 if dtype is None else 0.05) if fake_forward else real_forward(dtype, repeats=1)
    monkeypatch.delenv("ICHLIB_AMP", raising=False)
    monkeypatch.setenv("ICHLIB_CACHE", str(cache))
    monkeypatch.setattr("ichlib.device.cpu_has_amx", lambda: False)
    monkeypatch.setattr("ichlib.device.cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr("ichlib.device._time_training_step", training_step)
    monkeypatch.setattr("ichlib.device._time_forward_pass", forward)
    ichlib.device.measured_bf16_speedup.cache_clear()
    ichlib.device.measured_bf16_inference_speedup.cache_clear()
    monkeypatch.setattr("ichlib.device.measured_bf16_inference_speedup",
                        functools.cache(ichlib.device.measured_bf16_inference_speedup.__wrapped__))
    return calls


def _one_blood_scan() -> np.ndarray:
    hu = np.full((6, 16, 16), 20.0, dtype=np.float32)
    hu[3, 6:10, 6:10] = 70.0
    return hu


def test_the_first_prediction_measures_a_forward_pass_not_a_training_step(monkeypatch, tmp_path):
    calls = _fresh_avx512_bf16_cpu(monkeypatch, tmp_path / "cache", fake_forward=False)
    config = PreprocessConfig(windows=("brain",), img_size=16, seq_len=4)
    prediction = predict_scan(IntensityToy().eval(), config, _one_blood_scan(), amp="auto")
    assert prediction.probabilities["any"] > 0.99
    assert calls == {"training": [], "inference": [None, torch.bfloat16]}
    (key, entry), = json.loads((tmp_path / "cache" / ichlib.device.PRECISION_CACHE).read_text()).items()
    assert key.endswith("| inference") and entry["fp32_forward_s"] > 0 and entry["bf16_speedup"] > 0


@pytest.mark.parametrize("cache_state", ["damaged", "unwritable", "elsewhere", "two_threads"])
def test_the_first_prediction_survives_any_cache_and_thread_count(cache_state, monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    if cache_state == "damaged":
        cache.mkdir()
        (cache / ichlib.device.PRECISION_CACHE).write_text('{"half a fi')
    elif cache_state == "unwritable":
        (tmp_path / "a_file").write_text("")
        cache = tmp_path / "a_file" / "cache"
    elif cache_state == "elsewhere":
        cache = tmp_path / "deep" / "new" / "folder"
    calls = _fresh_avx512_bf16_cpu(monkeypatch, cache)
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if cache_state == "two_threads" else 1)
    try:
        config = PreprocessConfig(windows=("brain",), img_size=16, seq_len=4)
        prediction = predict_scan(IntensityToy().eval(), config, _one_blood_scan(), amp="auto")
    finally:
        torch.set_num_threads(threads)
    assert prediction.probabilities["any"] > 0.99
    assert calls == {"training": [], "inference": [None, torch.bfloat16]}
    if cache_state != "unwritable":
        entry = json.loads((cache / ichlib.device.PRECISION_CACHE).read_text())
        (key, value), = entry.items()
        expected_threads = 2 if cache_state == "two_threads" else 1
        assert f"| {expected_threads} threads | inference" in key
        assert value["bf16_speedup"] == pytest.approx(2.0)
