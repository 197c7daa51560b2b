"""K-fold cross-validation: every patient tested once, pooling, out-of-fold stage 2, resume, CLI."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ichlib.checkpoint import load_checkpoint, model_from_checkpoint
from ichlib.cli import main
from ichlib.errors import ConfigError, IchlibError
from ichlib.io.ctich import read_ct_ich
from ichlib.labels import LABELS
from ichlib.preprocess.dataset import ScanDataset
from ichlib.training import cv
from ichlib.training.config import TrainConfig
from ichlib.training.cv import (
    cross_validate,
    embed_out_of_fold,
    fold_configs,
    format_cv_summary,
    pool_folds,
)
from ichlib.training.data import prepare_data
from ichlib.training.metrics import score_predictions
from ichlib.training.results import Scores
from ichlib.training.two_stage import embed_scans
from tests.conftest import labels_with, tiny_train_config, write_ct_ich

N_SLICES = 6


def cv_labels() -> dict[int, np.ndarray]:
    """12 patients: 3 intraparenchymal, 3 subdural, 6 without blood."""
    subtypes = [0, 4, None, None] * 3
    return {49 + i: labels_with(N_SLICES, s, 1, 4) for i, s in enumerate(subtypes)}


@pytest.fixture(scope="module")
def cv_data(tmp_path_factory) -> Path:
    data = write_ct_ich(tmp_path_factory.mktemp("cv") / "ds", cv_labels(), size=32)
    (data / "synthetic.json").write_text('{"synthetic": true}')
    return data


@pytest.fixture(scope="module")
def cli_cv(cv_data, tmp_path_factory) -> tuple[Path, str]:
    """``ichlib train --folds 3`` end to end, 1 epoch per fold; S = 8 covers every slice."""
    out = tmp_path_factory.mktemp("cli") / "cv"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["train", "--data", str(cv_data), "--out", str(out), "--folds", "3", "--epochs", "1",
                       "--batch-size", "4", "--img-size", "32", "--seq-len", "8", "--n-boot", "30",
                       "--cache-dir", str(out.parent / "cache"), "--amp", "off"])
    assert status == 0
    return out, printed.getvalue()


def _fold_metrics(out: Path, k: int) -> dict:
    return json.loads((out / f"fold_{k}" / "metrics.json").read_text())


@pytest.mark.slow
def test_every_patient_is_tested_once_by_a_fold_that_did_not_train_on_it(cli_cv, cv_data):
    out, printed = cli_cv
    everyone = set(read_ct_ich(cv_data).patient_ids)
    tested = []
    for k in range(3):
        for name in ("best.pt", "last.pt", "history.csv", "metrics.json"):
            assert (out / f"fold_{k}" / name).exists(), (k, name)
        m = _fold_metrics(out, k)
        split = m["split"]
        assert set(split["train"]) | set(split["val"]) | set(split["test"]) == everyone
        assert not set(split["test"]) & (set(split["train"]) | set(split["val"]))
        assert set(m["test"]["probabilities"]) == set(split["test"])
        assert m["config"]["folds"] == 3 and m["config"]["fold"] == k
        tested += split["test"]
    assert sorted(tested) == sorted(everyone)  # exactly once each
    metrics = json.loads((out / "cv_metrics.json").read_text())
    assert metrics["fold_of"] == {pid: k for k in range(3) for pid in _fold_metrics(out, k)["split"]["test"]}
    assert metrics["n_patients"] == 12 and metrics["protocol"]["folds"] == 3
    # Stratified on every label: 3 intraparenchymal and 3 subdural patients over 3 folds.
    for label in ("intraparenchymal", "subdural"):
        assert [_fold_metrics(out, k)["test"]["patient"]["labels"][label]["n_pos"] for k in range(3)] == [1, 1, 1]
    # Labelled SYNTHETIC in the file and in what was printed.
    assert metrics["data"] == "synthetic" and "SYNTHETIC" in metrics["note"]
    assert printed.count("SYNTHETIC") >= 2 and "3-fold cross-validation" in printed
    assert "image-level weighted log loss" in printed and format_cv_summary(metrics) in printed


@pytest.mark.slow
def test_pooled_metrics_are_the_metrics_of_the_concatenated_fold_predictions(cli_cv, cv_data):
    out, _ = cli_cv
    metrics = json.loads((out / "cv_metrics.json").read_text())
    data = read_ct_ich(cv_data)
    folds = [_fold_metrics(out, k) for k in range(3)]
    ids = [pid for m in folds for pid in m["test"]["probabilities"]]
    y = np.stack([data.scan_labels(pid) for pid in ids])
    p = np.array([[m["test"]["probabilities"][pid][label] for label in LABELS]
                  for m in folds for pid in m["test"]["probabilities"]])
    b = np.array([[m["baseline"]["test_probabilities"][pid][label] for label in LABELS]
                  for m in folds for pid in m["baseline"]["test_probabilities"]])
    order = np.argsort(ids)  # pooled reports list patients sorted; the bootstrap follows that order
    expected = score_predictions(y[order], p[order], n_boot=30, seed=0)
    assert _same(metrics["pooled"]["patient"], expected)
    assert _same(metrics["baseline"]["patient"], score_predictions(y[order], b[order], n_boot=30, seed=0))
    # Image level: every slice of every test scan (S = 8 >= 6 slices), pooled over the folds'
    # images: the image-weighted mean of the fold values.
    images = [m["test"]["image"] for m in folds]
    assert all(r["n_images"] == N_SLICES * len(m["split"]["test"]) for r, m in zip(images, folds, strict=True))
    pooled = sum(r["image_weighted_log_loss"] * r["n_images"] for r in images) / (12 * N_SLICES)
    assert metrics["pooled"]["image"]["image_weighted_log_loss"] == pytest.approx(pooled, rel=1e-12)
    assert metrics["pooled"]["image"]["n_images"] == 12 * N_SLICES
    low, high = metrics["pooled"]["image"]["ci"]
    assert low <= pooled <= high
    assert metrics["baseline"]["image"]["image_weighted_log_loss"] is not None
    assert metrics["pooled"]["image"]["prevalence_prior"] > 0
    assert [f["model"]["mean_subtype_auc"] for f in metrics["folds"]] == \
        metrics["across_folds"]["model"]["values"] == \
        [m["test"]["patient"]["mean_subtype_auc"] for m in folds]


def _same(a: object, b: object) -> bool:
    """Equal after a JSON round trip (the file holds the report as JSON)."""
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


@pytest.mark.slow
def test_resume_keeps_finished_folds(cli_cv, tmp_path, monkeypatch):
    out = tmp_path / "cv"
    shutil.copytree(cli_cv[0], out)
    (out / "fold_1" / "metrics.json").unlink()  # fold 1 "was interrupted"
    before = {k: (out / f"fold_{k}" / "best.pt").stat().st_mtime_ns for k in (0, 2)}
    saved = json.loads((out / "cv_metrics.json").read_text())
    config = TrainConfig.from_dict({**saved["config"], "out_dir": str(out), "progress": False})
    trained = []
    real_fit = cv.fit
    monkeypatch.setattr(cv, "fit", lambda cfg, **kw: trained.append(cfg.fold) or real_fit(cfg, **kw))
    result = cross_validate(config, resume=True)
    assert trained == [1]
    assert {k: (out / f"fold_{k}" / "best.pt").stat().st_mtime_ns for k in (0, 2)} == before
    assert (out / "fold_1" / "metrics.json").exists() and result.metrics["n_patients"] == 12
    # the typed views read the pooled reports of cv_metrics.json
    assert result.pooled.auc("any") == result.metrics["pooled"]["patient"]["labels"]["any"]["auc"]
    assert result.pooled.n == 12 and result.baseline.n == 12
    assert result.baseline.mean_subtype_auc == result.metrics["baseline"]["patient"]["mean_subtype_auc"]
    for pid, k in saved["fold_of"].items():  # the kept folds' predictions are the same
        if k != 1:
            assert result.metrics["probabilities"][pid] == saved["probabilities"][pid]
    # A finished fold made with other settings is not silently reused.
    with pytest.raises(ConfigError, match="lr: saved 0.001, now 0.01"):
        cross_validate(TrainConfig.from_dict({**config.to_dict(), "lr": 0.01}), resume=True)
    assert trained == [1]


@pytest.fixture(scope="module")
def two_stage_cv(cv_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "cv"
    config = tiny_train_config(cv_data, out, epochs=1, seq_len=8, two_stage=True, sequence_epochs=3,
                               amp="off")
    return cross_validate(config, folds=3), config


@pytest.mark.slow
def test_two_stage_cv_trains_stage_2_on_out_of_fold_embeddings(two_stage_cv, cv_data):
    result, _ = two_stage_cv
    stage1 = [load_checkpoint(result.fold_dirs[j] / "stage1.pt") for j in range(3)]
    tested = []
    for k, run in enumerate(result.fold_dirs):
        m = json.loads((run / "metrics.json").read_text())
        split, seq = m["split"], m["training"]["sequence_stage"]
        tested += split["test"]
        assert seq["inputs"] == "out-of-fold embeddings"
        embedded_by = seq["embedded_by"]
        # Stage 2 of fold k trained on exactly its training and validation patients...
        assert set(embedded_by) == set(split["train"]) | set(split["val"])
        # ...never on its test patients...
        assert not set(embedded_by) & set(split["test"])
        for pid, j in embedded_by.items():
            # ...and each embedding came from a CNN that neither trained nor selected on it.
            assert j != k
            assert pid in stage1[j]["split"]["test"]
            assert pid not in stage1[j]["split"]["train"] + stage1[j]["split"]["val"]
        # Fold k is tested with its own CNN and its new sequence model.
        best = load_checkpoint(run / "best.pt")
        for name, weight in best["model"].items():
            same = torch.equal(weight, stage1[k]["model"][name])
            assert same == (not name.startswith(("lstm", "scan_head", "extra_sequences"))), name
    assert sorted(tested) == sorted(read_ct_ich(cv_data).patient_ids)
    assert result.metrics["protocol"]["stage2_inputs"].startswith("out-of-fold")


@pytest.mark.slow
def test_out_of_fold_embeddings_come_from_the_testing_fold_cnn(two_stage_cv):
    result, config = two_stage_cv
    configs = fold_configs(TrainConfig.from_dict({**config.to_dict(), "folds": 3}))
    embeddings, embedded_by = embed_out_of_fold(configs, cv.RunLog(progress=False))
    assert sorted(embedded_by) == sorted(result.metrics["fold_of"])
    assert embedded_by == result.metrics["fold_of"]
    prepared = prepare_data(configs[0])
    pid = sorted(embedded_by)[0]
    k = embedded_by[pid]
    dataset = ScanDataset(prepared.data, [pid], configs[0].preprocess, prepared.cache_dir)
    for j, run in enumerate(result.fold_dirs):
        model, _ = model_from_checkpoint(load_checkpoint(run / "stage1.pt"))
        # channels-last in the run, not here: equal to ~1e-6; another fold's CNN: ~0.1 apart
        same = torch.allclose(embed_scans(model, dataset, torch.device("cpu"))[pid], embeddings[pid], atol=1e-5)
        assert same == (j == k), (j, k)


def test_cli_folds_reaches_the_config(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake(config, folds=None, resume=False, log=None):
        seen.update(config=config, resume=resume)
        raise IchlibError("stopped by the test")

    monkeypatch.setattr(cv, "cross_validate", fake)
    status = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--folds", "5",
                   "--two-stage", "--resume", "--epochs", "2"])
    assert status == 1 and "stopped by the test" in capsys.readouterr().err
    assert seen["config"].folds == 5 and seen["config"].fold is None
    assert seen["config"].two_stage and seen["config"].epochs == 2 and seen["resume"] is True


def test_fold_settings_are_checked(tmp_path, small_ct_ich):
    for bad in ({"folds": 1}, {"fold": 0}, {"folds": 3, "fold": 3}):
        with pytest.raises(ConfigError):
            TrainConfig(data_dir=tmp_path, out_dir=tmp_path, **bad)
    with pytest.raises(ConfigError, match="cross_validate"):  # before any data is read
        prepare_data(TrainConfig(data_dir=tmp_path / "missing", out_dir=tmp_path, folds=3))
    with pytest.raises(ConfigError, match="number of folds"):
        cross_validate(TrainConfig(data_dir=small_ct_ich, out_dir=tmp_path))
    configs = fold_configs(TrainConfig(data_dir=small_ct_ich, out_dir=tmp_path, folds=2))
    assert [(c.fold, Path(c.out_dir).name) for c in configs] == [(0, "fold_0"), (1, "fold_1")]


def _fake_fold(probs: dict[str, float], labels: dict[str, int], image: dict | None) -> dict:
    """The parts of a fold's metrics.json that pooling reads."""
    row = {pid: {label: p for label in LABELS} for pid, p in probs.items()}
    lab = {pid: {label: y for label in LABELS} for pid, y in labels.items()}
    report = score_predictions(np.array([[y] * 6 for y in labels.values()]),
                               np.array([[p] * 6 for p in probs.values()]), n_boot=0)
    none = {"note": "n/a: sampled slices only"}
    return {"data": "synthetic", "note": "SYNTHETIC phantom data", "n_patients": {"test": len(probs)},
            "training": {"best_epoch": 1, "total_seconds": 1.0},
            "test": {"probabilities": row, "labels": lab, "patient": report, "image": image or none},
            "baseline": {"name": "intensity_baseline", "test_probabilities": row,
                         "test": {"patient": report, "image": image or none}}}


def test_pooling_by_hand(tmp_path):
    config = TrainConfig(data_dir=tmp_path, out_dir=tmp_path, folds=2, n_boot=0)
    first = _fake_fold({"a": 0.9, "b": 0.2}, {"a": 1, "b": 0},
                       {"by_patient": {"a": [1.0, 2], "b": [3.0, 4]}, "prevalence_prior": 0.5, "n_images": 6})
    second = _fake_fold({"c": 0.6, "d": 0.7}, {"c": 0, "d": 1},
                        {"by_patient": {"c": [2.0, 4]}, "prevalence_prior": 0.2, "n_images": 4})
    pooled = pool_folds(config, [first, second])
    assert pooled["fold_of"] == {"a": 0, "b": 0, "c": 1, "d": 1}
    # a 0.9 (+), b 0.2 (-), c 0.6 (-), d 0.7 (+): both positives above both negatives
    assert Scores.from_report(pooled["pooled"]["patient"]).auc("any") == 1.0
    assert pooled["pooled"]["image"]["image_weighted_log_loss"] == pytest.approx(6.0 / 10)
    assert pooled["pooled"]["image"]["prevalence_prior"] == pytest.approx((0.5 * 6 + 0.2 * 4) / 10)
    # One fold without every slice: no pooled image-level number, and the reason.
    partial = pool_folds(config, [first, _fake_fold({"c": 0.6, "d": 0.7}, {"c": 0, "d": 1}, None)])
    assert partial["pooled"]["image"]["image_weighted_log_loss"] is None
    assert "fold 1: n/a: sampled slices only" in partial["pooled"]["image"]["note"]
    with pytest.raises(IchlibError, match="patient a was tested in folds 0 and 1"):
        pool_folds(config, [first, first])
