"""Scoring: RSNA's image-level metric by hand, perfect and prior submissions on the synthetic
RSNA folder, and ``ichlib evaluate`` on RSNA and CT-ICH folders."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from ichlib.cli import main
from ichlib.errors import DataError
from ichlib.io.rsna import DuplicateLabelWarning, read_rsna_labels
from ichlib.labels import LABELS
from ichlib.rsna_submission import write_submission
from ichlib.scoring import evaluate_checkpoint, image_prior, score_submission

W = {label: (2.0 if label == "any" else 1.0) for label in LABELS}


@pytest.fixture(autouse=True)
def _quiet(tmp_path, monkeypatch):
    monkeypatch.setenv("ICHLIB_CACHE", str(tmp_path / "cache"))
    warnings.simplefilter("ignore", DuplicateLabelWarning)  # the synthetic CSV repeats two images


def truth(root: Path) -> dict[str, np.ndarray]:
    labels = read_rsna_labels(root / "stage_2_train.csv")[0]
    return {image: labels.loc[image, list(LABELS)].to_numpy(dtype=float) for image in labels.index}


def label_csv(path: Path, labels: dict[str, dict[str, int]]) -> Path:
    lines = ["ID,Label"] + [f"{image}_{label},{value}" for image, row in labels.items() for label, value in row.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_metric_on_a_hand_computed_three_image_example(tmp_path):
    zero = dict.fromkeys(LABELS, 0)
    labels = {"ID_a": {**zero, "any": 1, "subdural": 1}, "ID_b": zero, "ID_c": {**zero, "any": 1, "epidural": 1}}
    probs = {"ID_a": [0.9, 0.1, 0.1, 0.1, 0.1, 0.8],   # columns as LABELS
             "ID_b": [0.2, 0.1, 0.1, 0.1, 0.1, 0.1],
             "ID_c": [0.6, 0.1, 0.1, 0.1, 0.0, 0.1]}   # epidural 0 for a positive: clipped at 1e-15
    write_submission(tmp_path / "sub.csv", probs)
    report = score_submission(tmp_path / "sub.csv", label_csv(tmp_path / "labels.csv", labels))
    # per image: (2 * BCE(any) + sum of the five subtype BCEs) / 7
    a = (2 * -math.log(0.9) + 4 * -math.log(0.9) + -math.log(0.8)) / 7
    b = (2 * -math.log(0.8) + 5 * -math.log(0.9)) / 7
    c = (2 * -math.log(0.6) + 4 * -math.log(0.9) + -math.log(1e-15)) / 7
    assert report["image_weighted_log_loss"] == pytest.approx((a + b + c) / 3, rel=1e-9)
    assert report["n_images"] == 3 and report["clip"] == 1e-15
    assert report["labels"]["epidural"]["log_loss"] == pytest.approx(
        (-math.log(0.9) * 2 - math.log(1e-15)) / 3, rel=1e-9)


def test_one_half_everywhere_scores_log_two(tmp_path):
    labels = {f"ID_{k}": dict(zip(LABELS, row, strict=True)) for k, row in enumerate(
        [[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 1, 1, 0, 1]])}
    write_submission(tmp_path / "sub.csv", {image: [0.5] * 6 for image in labels})
    report = score_submission(tmp_path / "sub.csv", label_csv(tmp_path / "labels.csv", labels))
    assert report["image_weighted_log_loss"] == pytest.approx(math.log(2), rel=1e-12)


def test_a_submission_from_the_true_labels_scores_about_zero(rsna, tmp_path):
    labels = truth(rsna)
    write_submission(tmp_path / "perfect.csv", labels)
    report = score_submission(tmp_path / "perfect.csv", rsna)
    assert 0.0 < report["image_weighted_log_loss"] < 1e-12  # -log(1 - 1e-15): the clip, nothing else
    assert report["n_images"] == len(labels)
    flipped = {image: 1.0 - row for image, row in labels.items()}
    write_submission(tmp_path / "wrong.csv", flipped)
    assert score_submission(tmp_path / "wrong.csv", rsna)["image_weighted_log_loss"] == pytest.approx(
        -math.log(1e-15), rel=1e-4)  # every label wrong with certainty: the clip's cost (1 - 1e-15
    # is not exact in float64, so a clipped 1 costs 34.5395 and a clipped 0 costs 34.5388)


def test_a_submission_from_the_prior_scores_the_priors_loss(rsna, tmp_path):
    labels = truth(rsna)
    prior, what = image_prior(rsna / "stage_2_train.csv")
    y = np.stack(list(labels.values()))
    np.testing.assert_allclose(prior, (y.sum(axis=0) + 0.5) / (len(y) + 1))
    assert "stage_2_train.csv" in what
    write_submission(tmp_path / "prior.csv", {image: prior for image in labels})
    report = score_submission(tmp_path / "prior.csv", rsna)
    n1, n = y.sum(axis=0), len(y)
    per_label = -(n1 * np.log(prior) + (n - n1) * np.log(1 - prior)) / n
    weights = np.array([W[label] for label in LABELS])
    assert report["image_weighted_log_loss"] == pytest.approx(float(per_label @ weights / weights.sum()), rel=1e-6)
    assert report["references"]["folder_prevalence"]["image_weighted_log_loss"] == pytest.approx(
        report["image_weighted_log_loss"], rel=1e-6)


def test_unknown_and_missing_images_are_refused(rsna, tmp_path):
    labels = truth(rsna)
    extra = {**labels, "ID_nobody": np.zeros(6)}
    write_submission(tmp_path / "extra.csv", extra)
    with pytest.raises(DataError, match=r"1 image\(s\) are not in .*ID_nobody") as info:
        score_submission(tmp_path / "extra.csv", rsna)
    assert str(tmp_path / "extra.csv") in str(info.value)
    short = dict(list(labels.items())[1:])
    write_submission(tmp_path / "short.csv", short)
    with pytest.raises(DataError, match=f"1 of the {len(labels)} labelled images .* have no rows"):
        score_submission(tmp_path / "short.csv", rsna)


def test_evaluate_scores_what_the_submission_scores(rsna, checkpoint, tmp_path, capsys):
    sub = tmp_path / "sub.csv"
    assert main(["predict", "--checkpoint", str(checkpoint), "--rsna-csv", str(sub), "--fp32", str(rsna)]) == 0
    report = evaluate_checkpoint(checkpoint, rsna, amp="off", n_boot=50)
    scored = score_submission(sub, rsna)
    assert report["n_images"] == scored["n_images"] == len(truth(rsna))
    assert report["image"]["slice"]["image_weighted_log_loss"] == pytest.approx(
        scored["image_weighted_log_loss"], rel=1e-6)
    low, high = report["image"]["slice"]["ci"]
    assert low <= report["image"]["slice"]["image_weighted_log_loss"] <= high
    seq, sl = report["image"]["sequence"], report["image"]["slice"]
    assert report["image"]["difference"]["value"] == pytest.approx(
        seq["image_weighted_log_loss"] - sl["image_weighted_log_loss"], rel=1e-9)
    assert report["patient"]["n"] == 4 and report["data_kind"] == "synthetic"
    assert report["references"]["training_prior"] is None and not report["errors"]
    json.dumps(report, allow_nan=False)


def test_split_test_reads_the_runs_split(rsna, checkpoint, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    ckpt = run / "best.pt"
    ckpt.write_bytes(checkpoint.read_bytes())
    with pytest.raises(DataError, match="metrics.json"):
        evaluate_checkpoint(ckpt, rsna, split="test", amp="off", n_boot=0)
    series = sorted(json.loads((rsna / "synthetic.json").read_text())["series"], key=lambda s: s["series_uid"])
    uids = [s["series_uid"] for s in series]
    (run / "metrics.json").write_text(json.dumps({"split": {"train": uids[:2], "val": [uids[2]], "test": [uids[3]]}}))
    report = evaluate_checkpoint(ckpt, rsna, split="test", amp="off", n_boot=0)
    assert report["n_patients"] == 1 and report["n_images"] == len(series[3]["images"])
    labels = truth(rsna)
    train_labels = np.stack([labels[i] for s in series[:2] for i in s["images"]])
    prior = report["references"]["training_prior"]["prior"]
    np.testing.assert_allclose([prior[label] for label in LABELS],
                               (train_labels.sum(axis=0) + 0.5) / (len(train_labels) + 1))


def test_evaluate_on_a_ct_ich_folder(small_ct_ich, checkpoint, capsys):
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(small_ct_ich), "--fp32",
                 "--n-boot", "20"]) == 0
    out = capsys.readouterr().out
    assert "(ct-ich), split all: 4 scans, 22 images" in out  # 6 + 8 + 5 + 3 slices
    assert "RSNA 2019 weighted log loss over every image: w = 2 for any" in out and "1e-15" in out
    for line in ("slice head (submitted)", "sequence per-slice outputs", "patient level (4 scans"):
        assert line in out


def test_evaluate_json_and_the_submission_route(rsna, checkpoint, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(rsna), "--fp32", "--json",
                 "--n-boot", "10"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "all" and report["note"].startswith("SYNTHETIC")
    write_submission(tmp_path / "perfect.csv", truth(rsna))
    assert main(["evaluate", "--submission", str(tmp_path / "perfect.csv"), "--data", str(rsna)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("SYNTHETIC data") and "submission                         0.0000" in out


def test_evaluate_reports_a_bad_scan_and_scores_the_others(small_ct_ich, checkpoint, capsys):
    scan = small_ct_ich / "ct_scans" / "050.nii"
    scan.write_bytes(scan.read_bytes()[:400])
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(small_ct_ich), "--fp32",
                 "--n-boot", "0"]) == 1
    captured = capsys.readouterr()
    assert "split all: 3 scans, 14 images" in captured.out  # 6 + 5 + 3 slices; 050 left out
    errors = [line for line in captured.err.splitlines() if line.startswith("ichlib evaluate: error:")]
    assert len(errors) == 1 and str(scan) in errors[0]
