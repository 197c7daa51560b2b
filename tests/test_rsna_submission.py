"""RSNA 2019 submissions on the synthetic RSNA folder: every image six times, in the slice
order of the ground truth, a broken image filled with the prior, the same bytes twice."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ichlib.checkpoint import load_checkpoint, save_checkpoint
from ichlib.cli import main
from ichlib.errors import ConfigError, DataError
from ichlib.io.dicom.series import load_dicom_series, write_series_manifest
from ichlib.labels import LABELS
from ichlib.predict import Predictor
from ichlib.rsna_submission import (
    SUBMISSION_LABELS,
    collect_rsna_series,
    per_slice_probabilities,
    predict_rsna,
    predict_slices,
    read_submission,
    submission_id,
    write_submission,
)
from ichlib.synthetic.rsna import ct_dataset, write_dataset
from tests.conftest import tiny_checkpoint


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ICHLIB_CACHE", str(tmp_path / "cache"))


def truth_images(root: Path) -> dict[str, list[str]]:
    """Per series, its images from skull base to vertex (the generator's ground truth)."""
    meta = json.loads((root / "synthetic.json").read_text())
    files = {p.stem for p in (root / "stage_2_train").glob("*.dcm")}
    return {s["series_uid"]: [i for i in s["images"] if i in files] for s in meta["series"]}


def rows_of(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["ID", "Label"]
        return [(row[0], row[1]) for row in reader]


def test_every_image_appears_six_times_and_no_id_is_unknown(rsna, checkpoint, tmp_path, capsys):
    out = tmp_path / "submission.csv"
    assert main(["predict", "--checkpoint", str(checkpoint), "--rsna-csv", str(out), "--fp32", str(rsna)]) == 0
    rows = rows_of(out)
    images = {i for ids in truth_images(rsna).values() for i in ids}
    per_image = Counter(row_id.rpartition("_")[0] for row_id, _ in rows)
    assert set(per_image) == images and set(per_image.values()) == {6}
    assert len(rows) == 6 * len(images)
    for k in range(0, len(rows), 6):  # an image's six rows together, in RSNA's label order
        image = rows[k][0].rpartition("_")[0]
        assert [r[0] for r in rows[k:k + 6]] == [f"{image}_{label}" for label in SUBMISSION_LABELS]
    assert [r[0] for r in rows[::6]] == sorted(r[0] for r in rows[::6])
    assert all(0.0 <= float(p) <= 1.0 for _, p in rows)
    assert f"wrote {len(rows)} rows ({len(images)} images x 6 labels, 4 series)" in capsys.readouterr().out


def test_series_are_read_in_the_slice_order_of_the_ground_truth(rsna):
    found = collect_rsna_series([rsna])
    truth = truth_images(rsna)
    assert not found.unusable and not found.errors
    assert {s.series_uid: list(s.image_ids) for s in found.series} == truth
    assert [s.series_uid for s in found.series] == sorted(truth)


def test_each_image_gets_the_probability_of_its_own_slice(rsna, checkpoint):
    predictor = Predictor(checkpoint, device="cpu", amp="off")
    result = predict_rsna(predictor, [rsna])
    series = collect_rsna_series([rsna]).series[1]
    # A manifest listing the files in reverse: the loader orders by position, not by list order.
    manifest = write_series_manifest(Path(rsna).parent / "rev.series", list(series.files[::-1]))
    expected = predictor(load_dicom_series(manifest)).slice_probabilities
    got = np.stack([result.probabilities[i] for i in series.image_ids])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert len({tuple(np.round(r, 6)) for r in got}) > 1  # the slices do differ


def test_the_file_is_byte_identical_across_two_runs(rsna, checkpoint, tmp_path):
    paths = [tmp_path / "a.csv", tmp_path / "b.csv"]
    for path in paths:
        assert main(["predict", "--checkpoint", str(checkpoint), "--rsna-csv", str(path), "--fp32",
                     "--json", str(rsna)]) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert not list(tmp_path.glob(".*.tmp*"))  # written atomically: no temporary left


def test_an_unreadable_image_gets_the_prior_and_is_reported(rsna, checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(rsna, broken)
    series = collect_rsna_series([rsna]).series
    victim = broken / "stage_2_train" / series[0].files[0].name
    victim.write_bytes(b"not a DICOM file at all" * 10)
    prior = [0.11, 0.02, 0.03, 0.04, 0.05, 0.06]
    predictor = Predictor(checkpoint, device="cpu", amp="off")
    clean = predict_rsna(predictor, [rsna])
    result = predict_rsna(predictor, [broken], prior=prior, prior_source="test prior")
    assert set(result.probabilities) == set(clean.probabilities)
    assert victim.stem in result.fallback
    np.testing.assert_allclose(result.probabilities[victim.stem], prior)
    assert any(str(victim) in e.error for e in result.errors)
    for other in series[1:]:  # the other series are predicted as before
        for image in other.image_ids:
            np.testing.assert_allclose(result.probabilities[image], clean.probabilities[image], rtol=1e-6)
    out = tmp_path / "sub.csv"
    write_submission(out, result.probabilities)
    table = read_submission(out)
    np.testing.assert_allclose(table.loc[victim.stem, list(LABELS)].to_numpy(dtype=float), prior)


def test_without_a_prior_the_fallback_is_the_mean_prediction(rsna, checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(rsna, broken)
    victim = next((broken / "stage_2_train").glob("*.dcm"))
    victim.write_bytes(b"")
    result = predict_rsna(Predictor(checkpoint, device="cpu", amp="off"), [broken])
    predicted = [p for i, p in result.probabilities.items() if i not in result.fallback]
    np.testing.assert_allclose(result.prior, np.mean(predicted, axis=0))
    assert "mean probability" in result.prior_source


def test_the_cli_reports_errors_and_still_writes_every_row(rsna, checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(rsna, broken)
    victim = next((broken / "stage_2_train").glob("*.dcm"))
    victim.write_bytes(b"garbage" * 50)
    out = tmp_path / "sub.csv"
    code = main(["predict", "--checkpoint", str(checkpoint), "--rsna-csv", str(out), "--fp32",
                 "--prior-from", str(rsna / "stage_2_train.csv"), str(broken), str(tmp_path / "nowhere")])
    captured = capsys.readouterr()
    assert code == 1
    assert str(victim) in captured.err and f"{tmp_path / 'nowhere'}: scan not found" in captured.err
    assert len(read_submission(out)) == sum(map(len, truth_images(rsna).values()))
    assert "got the prior (image prevalence of" in captured.out


def test_sequence_outputs_peak_at_the_patient_level_probability(checkpoint, tmp_path):
    # 8 slices, S = 4: two samplings that hold each slice exactly once, so with max pooling the
    # patient-level probability is the largest per-slice sequence probability.
    predictor = Predictor(checkpoint, device="cpu", amp="off")
    hu = np.random.default_rng(0).normal(30, 40, size=(8, 32, 32)).astype(np.float32)
    out = predict_slices(predictor, hu)
    assert out.sequence.shape == (8, 6)
    patient = np.array([out.prediction.probabilities[label] for label in LABELS])
    np.testing.assert_allclose(out.sequence.max(axis=0), patient, rtol=1e-5)
    assert not np.allclose(out.sequence, out.prediction.slice_probabilities)
    np.testing.assert_array_equal(out.probabilities("slice"), out.prediction.slice_probabilities)


def test_a_model_of_several_members_gives_each_slice_their_mean_probability(tmp_path):
    # Two sequence halves over one CNN: each slice's sequence probability is the mean of what
    # each half alone says (8 slices, S = 4: every slice sits in one sampling only).
    both = load_checkpoint(tiny_checkpoint(tmp_path / "both.pt", sequence_members=2))
    halves = []
    for k in range(2):
        weights = {key: value for key, value in both["model"].items() if not key.startswith("extra_sequences.")}
        if k:
            prefix = "extra_sequences.0."
            weights.update({key[len(prefix):]: value for key, value in both["model"].items() if key.startswith(prefix)})
        halves.append(save_checkpoint(tmp_path / f"half{k}.pt", {
            **both, "model": weights, "model_config": {**both["model_config"], "sequence_members": 1}}))
    hu = np.random.default_rng(0).normal(30, 40, size=(8, 32, 32)).astype(np.float32)
    out = predict_slices(Predictor(tmp_path / "both.pt", device="cpu", amp="off"), hu)
    alone = [predict_slices(Predictor(path, device="cpu", amp="off"), hu) for path in halves]
    assert not np.allclose(alone[0].sequence, alone[1].sequence)
    np.testing.assert_allclose(out.sequence, (alone[0].sequence + alone[1].sequence) / 2, rtol=1e-5)
    # the scan: per sampling the mean of the halves, then the larger of the two samplings,
    # which is at most the mean of each half's own maximum
    for label in LABELS:
        mean = (alone[0].prediction.probabilities[label] + alone[1].prediction.probabilities[label]) / 2
        assert out.prediction.probabilities[label] <= mean + 1e-6


def test_per_slice_probabilities_average_the_logits_of_each_slice():
    logits = np.array([[[0.0], [2.0]], [[4.0], [-1.0]]])  # [K=2, S=2, 1]
    samplings = np.array([[0, 1], [1, 2]])
    got = per_slice_probabilities(logits, samplings, 3)[:, 0]
    sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    np.testing.assert_allclose(got, [sigmoid(0.0), sigmoid(3.0), sigmoid(-1.0)])
    with pytest.raises(ConfigError, match="cover"):
        per_slice_probabilities(logits, samplings, 4)


def test_the_sequence_source_needs_per_slice_outputs(rsna, tmp_path):
    predictor = Predictor(tiny_checkpoint(tmp_path / "last.pt", pooling="last"), device="cpu")
    with pytest.raises(ConfigError, match="no per-slice sequence outputs"):
        predict_rsna(predictor, [rsna], image_source="sequence")
    with pytest.raises(ConfigError, match="unknown image source"):
        predict_rsna(predictor, [rsna], image_source="head")


def test_series_manifests_and_series_folders_are_inputs(rsna, checkpoint, tmp_path):
    series = collect_rsna_series([rsna]).series
    folder = tmp_path / "one_series"
    folder.mkdir()
    for f in series[0].files:
        shutil.copy(f, folder / f.name)
    manifest = write_series_manifest(tmp_path / "two.series", list(series[1].files))
    found = collect_rsna_series([folder, manifest, tmp_path / "scan.nii"])
    assert {s.image_ids for s in found.series} == {series[0].image_ids, series[1].image_ids}
    assert len(found.errors) == 1 and "scan.nii: not found" in found.errors[0].error
    again = collect_rsna_series([manifest, manifest])  # the same images twice: kept once, reported
    assert len(again.series) == 1 and "already read" in again.errors[0].error and not again.unusable


def test_submission_ids():
    assert submission_id("ID_63eb1e259", "any") == "ID_63eb1e259_any"
    assert submission_id("1.2.840.1", "epidural") == "ID_1.2.840.1_epidural"


@pytest.mark.parametrize(("text", "message"), [
    ("ID,Label\nID_a_any,0.5\n", r"1 image\(s\) lack some of their six rows \(e.g. ID_a: no intraparenchymal"),
    ("ID,Label\nID_a_blood,0.5\n", "line 2: 'ID_a_blood'"),
    ("ID,Label\nID_a_any,1.5\n", "not a probability in \\[0, 1\\]; first at line 2: '1.5'"),
    ("ID,Label\nID_a_any,nan\n", "not a probability"),
    ("ID,Label\nID_a_any,0.1\nID_a_any,0.2\n", "appears twice; first at line 3"),
    ("Image,P\nID_a_any,0.1\n", "expected the columns ID,Label"),
])
def test_a_bad_submission_is_refused_naming_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "sub.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        read_submission(path)
    assert str(path) in str(info.value)


def test_write_submission_refuses_values_that_are_not_probabilities(tmp_path):
    with pytest.raises(ConfigError, match="image ID_x"):
        write_submission(tmp_path / "s.csv", {"ID_x": [0.1, 0.2, np.nan, 0.1, 0.1, 0.1]})
    assert not (tmp_path / "s.csv").exists()


def test_a_series_whose_images_share_an_id_is_not_predicted(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    for k, sop in enumerate(["ID_a", "ID_b", "ID_b"]):
        ds = ct_dataset(np.full((8, 8), 1044, dtype=np.int16), sop_uid=sop, series_uid="ID_s",
                        study_uid="ID_st", patient_id="ID_p", position=(0.0, 0.0, 5.0 * k))
        write_dataset(folder / f"file{k}.dcm", ds)
    found = collect_rsna_series([folder])
    assert not found.series
    assert set(found.unusable) == {"ID_a", "ID_b"} and "repeats within the series" in found.unusable["ID_a"]
