"""Typed views of metrics.json: each attribute reads the value the nested dict holds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ichlib.errors import ConfigError
from ichlib.labels import LABELS
from ichlib.training.fit import fit
from ichlib.training.metrics import score_predictions
from ichlib.training.results import RunMetrics, Scores
from tests.conftest import labels_with, tiny_train_config, write_ct_ich


def test_scores_name_what_the_report_holds():
    rng = np.random.default_rng(0)
    y = (rng.random((40, len(LABELS))) < 0.4).astype(float)
    y[:, 4] = 0.0  # epidural: no positive, so no AUC
    p = np.clip(y * 0.6 + rng.random(y.shape) * 0.5, 0, 1)
    report = score_predictions(y, p, n_boot=50, seed=1)
    scores = Scores.from_report(report)
    assert scores.level == "patient" and scores.n == 40
    for label in LABELS:
        entry = report["labels"][label]
        assert scores.auc(label) == entry["auc"]
        assert scores.ci(label) == (None if entry["auc_ci"] is None else tuple(entry["auc_ci"]))
        assert (scores.labels[label].n_pos, scores.labels[label].n_neg) == (entry["n_pos"], entry["n_neg"])
    assert scores.auc("epidural") is None and scores.labels["epidural"].note
    assert scores.mean_subtype_auc == report["mean_subtype_auc"]
    assert scores.mean_subtype_auc_ci == tuple(report["mean_subtype_auc_ci"])
    assert scores.weighted_log_loss == report["patient_weighted_log_loss"] is not None
    with pytest.raises(ConfigError, match="unknown label 'blood'"):
        scores.auc("blood")
    with pytest.raises(ConfigError, match="not a score report"):
        Scores.from_report({"level": "patient"})


def test_a_runs_scores_read_its_metrics_json(tmp_path):
    labels = {49 + i: labels_with(6, (i % 5) if i % 2 else None, 1, 4) for i in range(8)}
    data = write_ct_ich(tmp_path / "ds", labels, size=32)
    run = fit(tiny_train_config(data, tmp_path / "run", epochs=1))
    scores = run.scores
    metrics = json.loads(run.metrics_path.read_text())
    assert scores.test.auc("any") == metrics["test"]["patient"]["labels"]["any"]["auc"]
    assert scores.test.mean_subtype_auc == metrics["test"]["patient"]["mean_subtype_auc"]
    assert scores.test_slices.level == "slice" and scores.test_slices.n == metrics["test"]["slice"]["n"]
    assert scores.image_log_loss == metrics["test"]["image"]["image_weighted_log_loss"]
    assert scores.prior_log_loss == metrics["test"]["image"]["prevalence_prior"]
    assert list(scores.test_probabilities.index) == run.split["test"]
    assert list(scores.test_probabilities.columns) == list(LABELS)
    first = run.split["test"][0]
    assert scores.test_probabilities.loc[first, "any"] == metrics["test"]["probabilities"][first]["any"]
    assert set(scores.combines.index) == {"max", "mean", "one"}
    assert scores.combines.loc["max", "auc_any"] == metrics["test"]["combines"]["max"]["auc_any"]
    assert scores.thresholds == metrics["thresholds"] and scores.data == "real"
    assert set(scores.comparisons) == {"intensity rule", "position rule"}
    assert RunMetrics.read(run.out_dir).test.raw == metrics["test"]["patient"]


def test_metrics_without_test_scores_are_refused_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no metrics.json"):
        RunMetrics.read(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"split": {}}))
    with pytest.raises(ConfigError, match=r"metrics.json: .*no test scores"):
        RunMetrics.read(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ConfigError, match="metrics.json"):
        RunMetrics.read(tmp_path)
