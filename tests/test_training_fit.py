"""Training: the run folder, resuming, overfitting four scans, broken data, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from ichlib.checkpoint import load_checkpoint
from ichlib.cli import main
from ichlib.errors import ConfigError, DataError
from ichlib.io.ctich import read_ct_ich
from ichlib.labels import LABELS
from ichlib.losses import ScanSliceLoss
from ichlib.model import CNNBiLSTM
from ichlib.preprocess.dataset import PreprocessConfig, ScanDataset
from ichlib.preprocess.splits import patient_split
from ichlib.training.config import TrainConfig
from ichlib.training.data import prepare_data
from ichlib.training.engine import make_optimizer, train_one_epoch
from ichlib.training.fit import fit
from ichlib.training.loaders import make_loader
from tests.conftest import labels_with, tiny_train_config, write_ct_ich

# Numbers that go through amp="auto": CI runs these again under ICHLIB_AMP=bf16.
pytestmark = pytest.mark.amp


def tiny_labels(n: int = 8) -> dict[int, np.ndarray]:
    """Half the patients negative; the others with one subtype on slices 2-4."""
    return {49 + i: labels_with(6, (i % 5) if i % 2 else None, 1, 4) for i in range(n)}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_ct_ich(tmp_path_factory.mktemp("tiny") / "ds", tiny_labels(), size=32)


@pytest.fixture(scope="module")
def reference_run(tiny_data, tmp_path_factory):
    """Two uninterrupted epochs, deterministic."""
    return fit(tiny_train_config(tiny_data, tmp_path_factory.mktemp("ref") / "run"))


def test_fit_writes_the_run_folder(reference_run, tiny_data):
    run = reference_run
    for path in (run.best_path, run.last_path, run.history_path, run.metrics_path):
        assert path.exists(), path
    history = pd.read_csv(run.history_path)
    assert list(history["epoch"]) == [1, 2]
    assert {"train_loss", "train_scan_loss", "train_slice_loss", "val_loss", "val_mean_auc", "lr"} <= set(history)

    metrics = json.loads(run.metrics_path.read_text())
    assert metrics["data"] == "real" and metrics["labels"] == list(LABELS)
    expected_split = patient_split(read_ct_ich(tiny_data).patients, 0.25, 0.25, seed=0)
    assert metrics["split"] == expected_split == run.split
    test_ids = set(metrics["split"]["test"])
    assert test_ids.isdisjoint(metrics["split"]["train"]) and test_ids.isdisjoint(metrics["split"]["val"])
    test = metrics["test"]
    assert set(test["patient"]["labels"]) == set(LABELS)
    assert set(test["probabilities"]) == test_ids
    assert test["slice"]["level"] == "slice" and test["slice"]["n_patients"] == len(test_ids)
    # RSNA's image-level loss is reported only when the slice predictions cover every image
    # (6 per scan here), never over a sample of them.
    image = test["image"]
    assert (image["image_weighted_log_loss"] is None) == (image["n_images"] < 6 * len(test_ids))
    assert image["prevalence_prior"] is None or image["prevalence_prior"] > 0
    assert set(metrics["thresholds"]) == set(LABELS)
    for entry in test["patient"]["labels"].values():
        assert entry["threshold"] is not None and "sensitivity" in entry
    # The baseline is scored on the same test patients.
    assert set(metrics["baseline"]["test_probabilities"]) == test_ids
    assert metrics["training"]["best_epoch"] in (1, 2) and metrics["training"]["epochs_run"] == 2
    timing = metrics["training"]           # end to end: the epochs are all the training time
    assert timing["total_seconds"] == timing["epoch_seconds"] > 0
    assert "sequence_stage" not in timing
    assert metrics["config"]["img_size"] == 32
    # the shortcut audit and the paired comparisons with both one-feature rules
    assert set(metrics["position_baseline"]["test_probabilities"]) == test_ids
    assert set(metrics["comparisons"]) == {"intensity rule", "position rule"}
    audit = metrics["shortcut_audit"]
    assert 0 <= audit["band"][0] <= audit["band"][1] <= 1
    assert {(r["model"], r["where"]) for r in audit["rows"]} == {
        (m, w) for m in ("slice head", "intensity rule", "height rule") for w in ("all heights", "blood band")}
    assert isinstance(metrics["warnings"], list)
    assert set(test["combines"]) == {"max", "mean", "one"}
    assert (history["train_base_rate_loss"] > 0).all()

    best = load_checkpoint(run.best_path)
    last = load_checkpoint(run.last_path)
    assert "optimizer" not in best and {"optimizer", "lr_scheduler", "rng", "early_stopping"} <= set(last)
    assert best["preprocess"] == PreprocessConfig(("brain",), 32, 4).to_dict()
    assert last["epoch"] == 2 and last["data"] == "real" and len(last["history"]) == 2
    assert set(best["thresholds"]) == set(LABELS)


def test_resume_refuses_other_settings(reference_run, tiny_data, tmp_path):
    shutil.copy(reference_run.last_path, tmp_path / "last.pt")
    config = tiny_train_config(tiny_data, tmp_path, lr=0.01)
    with pytest.raises(ConfigError, match="lr: saved 0.001, now 0.01"):
        fit(config, resume=True)


def test_four_scans_can_be_overfitted(tiny_data):
    torch.manual_seed(0)
    data = read_ct_ich(tiny_data)
    ids = [pid for pid in data.patient_ids if data.scan_labels(pid)[0] == 1][:2]
    ids += [pid for pid in data.patient_ids if data.scan_labels(pid)[0] == 0][:2]
    dataset = ScanDataset(data, ids, PreprocessConfig(img_size=32, seq_len=4))
    model = CNNBiLSTM(lstm_hidden=16, dropout=0.0)
    optimizer = make_optimizer(model, lr=1e-3)
    loader = make_loader(dataset, batch_size=4)
    criterion = ScanSliceLoss(0.5)
    losses = [train_one_epoch(model, criterion, optimizer, loader, torch.device("cpu"), epoch).loss
              for epoch in range(20)]
    assert losses[-1] < 0.3 * losses[0], losses


def test_broken_scans_stop_the_run_or_are_skipped(tiny_data, tmp_path):
    data = tmp_path / "ds"
    shutil.copytree(tiny_data, data)
    truncated = data / "ct_scans" / "052.nii"
    truncated.write_bytes(truncated.read_bytes()[:-500])  # found from the header
    nan_scan = data / "ct_scans" / "053.nii"               # found when the voxels are read
    img = nib.load(nan_scan)
    voxels = np.asarray(img.dataobj, dtype=np.float32)
    voxels[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(voxels, img.affine), nan_scan)

    with pytest.raises(DataError, match="052.nii.*truncated") as info:
        prepare_data(tiny_train_config(data, tmp_path / "run"))
    assert "skip" in str(info.value)
    truncated.unlink()
    shutil.copy(tiny_data / "ct_scans" / "052.nii", truncated)
    with pytest.raises(DataError, match="053.nii.*NaN") as info:
        prepare_data(tiny_train_config(data, tmp_path / "run"))
    assert "skip" in str(info.value)

    truncated.write_bytes(truncated.read_bytes()[:-500])
    prepared = prepare_data(tiny_train_config(data, tmp_path / "run", skip_bad=True))
    assert sorted(s["patient_id"] for s in prepared.skipped) == ["052", "053"]
    assert all(s["path"].endswith(("052.nii", "053.nii")) for s in prepared.skipped)
    used = sum(prepared.split.values(), [])
    assert "052" not in used and "053" not in used and len(used) == 6


def test_config_validation_and_round_trip(tmp_path):
    config = TrainConfig(data_dir=tmp_path, out_dir=tmp_path / "run", windows="brain,subdural")
    assert config.windows == ("brain", "subdural")
    assert TrainConfig.from_dict(config.to_dict()) == config
    json.dumps(config.to_dict())
    for bad in ({"monitor": "accuracy"}, {"amp": "fp8"}, {"aux_weight": 2.0}, {"windows": ("lung",)},
                {"backbone": "vgg"}, {"seq_len": 0}, {"patience": 0}):
        with pytest.raises(ConfigError):
            TrainConfig(data_dir=tmp_path, out_dir=tmp_path, **bad)


def test_cli_train_end_to_end(tmp_path, capsys):
    data = write_ct_ich(tmp_path / "ds", tiny_labels(9), size=32)
    (data / "synthetic.json").write_text('{"synthetic": true}')
    broken = data / "ct_scans" / "057.nii"
    broken.write_bytes(b"junk")
    run = tmp_path / "run"
    status = main(["train", "--data", str(data), "--out", str(run), "--epochs", "1",
                   "--batch-size", "4", "--img-size", "32", "--seq-len", "4", "--n-boot", "20",
                   "--cache-dir", str(tmp_path / "cache"), "--skip-bad", "--amp", "off"])
    out, err = capsys.readouterr()
    assert status == 0, err
    for name in ("best.pt", "last.pt", "history.csv", "metrics.json"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"] == "synthetic" and "SYNTHETIC" in metrics["note"]
    assert [s["patient_id"] for s in metrics["skipped"]] == ["057"]
    assert load_checkpoint(run / "best.pt")["data"] == "synthetic"
    assert "SYNTHETIC" in out and "subdural" in out and "057" in err


def test_forced_bf16_training_is_reported_and_scored_in_float32(tiny_data, tmp_path, monkeypatch):
    # ICHLIB_AMP=bf16 runs the bf16 path on any CPU (emulated where the CPU lacks it); the
    # test split is still scored in float32, so metrics.json does not depend on the CPU.
    from ichlib.checkpoint import model_from_checkpoint
    from ichlib.predict import predict_scan

    monkeypatch.setenv("ICHLIB_AMP", "bf16")
    run = fit(tiny_train_config(tiny_data, tmp_path / "run", epochs=1))
    assert "bfloat16" in run.metrics["training"]["device"]
    assert run.metrics["evaluation_precision"] == "float32"
    assert np.isfinite(run.history["train_loss"]).all()
    model, preprocess = model_from_checkpoint(load_checkpoint(run.best_path))
    for pid, expected in run.metrics["test"]["probabilities"].items():
        got = predict_scan(model, preprocess, tiny_data / "ct_scans" / f"{pid}.nii", amp="off")
        # float16 cache against the NIfTI read: far below bf16's rounding (about 4e-3 here)
        np.testing.assert_allclose([got.probabilities[k] for k in LABELS],
                                   [expected[k] for k in LABELS], atol=2e-3)


def test_the_curriculum_warms_the_cnn_up_on_the_slice_task_then_trains_end_to_end(tiny_data, tmp_path):
    config = tiny_train_config(tiny_data, tmp_path / "run", warmup_epochs=2, epochs=1)
    assert config.cnn_lr_scale == 0.1
    result = fit(config)
    warm = load_checkpoint(tmp_path / "run" / "warmup" / "stage1.pt")
    trained = load_checkpoint(result.best_path)
    assert warm["config"]["two_stage"] and len(warm["history"]) <= 2
    start = result.metrics["training"]["warm_start"]
    assert start["from"] == str(tmp_path / "run" / "warmup" / "stage1.pt") and start["cnn_lr_scale"] == 0.1
    # the end-to-end epoch changed the warmed-up CNN, at a tenth of the heads' learning rate
    key = "encoder.conv1.weight"
    assert not torch.equal(warm["model"][key], trained["model"][key])
    last = load_checkpoint(result.last_path)
    lrs = [g["lr"] for g in last["optimizer"]["param_groups"]]
    assert len(lrs) == 2 and lrs[1] == pytest.approx(0.1 * lrs[0])
    # init_from starts from the same weights without a warm-up of its own
    again = fit(tiny_train_config(tiny_data, tmp_path / "again", epochs=1, init_from=str(
        tmp_path / "run" / "warmup" / "stage1.pt")))
    assert not (tmp_path / "again" / "warmup").exists()
    got = load_checkpoint(again.best_path)["model"]
    assert all(torch.equal(got[k], v) for k, v in trained["model"].items())


def test_warm_start_settings_are_checked(tiny_data, tmp_path, reference_run):
    with pytest.raises(ConfigError, match="two_stage"):
        tiny_train_config(tiny_data, tmp_path / "r", two_stage=True, warmup_epochs=1)
    with pytest.raises(ConfigError, match="not both"):
        tiny_train_config(tiny_data, tmp_path / "r", warmup_epochs=1, init_from="x.pt")
    with pytest.raises(ConfigError, match="matched_fraction"):
        tiny_train_config(tiny_data, tmp_path / "r", matched_fraction=1.5)
    other = tiny_train_config(tiny_data, tmp_path / "r", img_size=48, init_from=str(reference_run.best_path))
    with pytest.raises(ConfigError, match="img_size: 32 there, 48 here"):
        fit(other)


def test_label_shuffle_control_scores_chance_and_the_real_labels_do_not(tmp_path):
    """The guardrail every training claim needs: the same recipe on labels shuffled across
    patients (images unchanged) scores about 0.5 (its interval over patients holds 0.5); on the
    real labels it does not (its interval lies above 0.8)."""
    n, rng = 32, np.random.default_rng(3)
    labels = {100 + i: labels_with(6, (i // 2) % 5 if i % 2 else None, 1, 4) for i in range(n)}
    real = write_ct_ich(tmp_path / "real", labels, size=32)
    keys, order = list(labels), rng.permutation(n)
    images = write_ct_ich(tmp_path / "shuffled", labels, size=32)
    # the label table of the shuffled world: patient i carries patient order[i]'s labels
    shuffled = write_ct_ich(tmp_path / "csv", {keys[i]: labels[keys[order[i]]] for i in range(n)}, size=32)
    shutil.copy(shuffled / "hemorrhage_diagnosis_raw_ct.csv", images / "hemorrhage_diagnosis_raw_ct.csv")
    scores = {}
    for name, data in (("real", real), ("shuffled", images)):
        config = tiny_train_config(data, tmp_path / f"run_{name}", two_stage=True, epochs=10, sequence_epochs=20,
                                   val_fraction=0.2, test_fraction=0.5, n_boot=200, amp="off")
        scores[name] = fit(config).metrics["test"]["slice"]["labels"]["any"]
    low, high = scores["shuffled"]["auc_ci"]
    assert low < 0.5 < high, scores["shuffled"]
    assert scores["real"]["auc_ci"][0] > 0.8, scores["real"]


def test_the_final_validation_scores_are_those_of_best_pt_read_again(reference_run, tiny_data):
    """fit reuses the best epoch's validation pass (float32, one process); reading validation
    again from best.pt must give the same numbers, or the reuse would report another model."""
    from ichlib.device import resolve_amp, resolve_device
    from ichlib.training.evaluation import final_evaluation

    config = TrainConfig.from_dict(reference_run.metrics["config"])
    prepared = prepare_data(config)
    device = resolve_device(config.device)
    again = final_evaluation(config, prepared, reference_run.best_path, device, "real")
    saved = reference_run.metrics["val"]
    if resolve_amp(config.amp, device) is None:  # the pass was reused: same float32 numbers
        assert saved["loss"] == pytest.approx(again["val"]["loss"], rel=1e-5)
        assert saved["patient"]["mean_auc"] == pytest.approx(again["val"]["patient"]["mean_auc"], abs=1e-9)
    else:  # bf16 training: validation was read again in float32, as here
        assert saved["loss"] == pytest.approx(again["val"]["loss"], rel=1e-6)
    assert reference_run.metrics["thresholds"] == pytest.approx(again["thresholds"])
