"""Two-stage training: embeddings, the sequence stage on its own, and fit(two_stage=True)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ichlib.checkpoint import load_checkpoint
from ichlib.cli import main
from ichlib.errors import ConfigError
from ichlib.io.ctich import read_ct_ich
from ichlib.model import CNNBiLSTM, SequenceHalf
from ichlib.predict import Predictor
from ichlib.preprocess.dataset import PreprocessConfig, ScanDataset, to_model_input
from ichlib.preprocess.sampling import covering_indices
from ichlib.training.config import TrainConfig
from ichlib.training.fit import fit
from ichlib.training.two_stage import (
    SequenceStageConfig,
    SliceSampler,
    SliceStage,
    SliceStageConfig,
    covering_logits,
    embed_scans,
    sample_sequences,
    sequence_parameters,
    train_sequence_stage,
)
from tests.conftest import labels_with, write_ct_ich

# Numbers that go through amp="auto": CI runs these again under ICHLIB_AMP=bf16.
pytestmark = pytest.mark.amp


def small_model() -> CNNBiLSTM:
    torch.manual_seed(0)
    return CNNBiLSTM(lstm_hidden=8, dropout=0.0)


def test_embed_scans_equals_the_encoder_on_every_slice(small_ct_ich, tmp_path, one_thread):
    data = read_ct_ich(small_ct_ich)
    dataset = ScanDataset(data, data.patient_ids, PreprocessConfig(img_size=32), tmp_path / "cache")
    model = small_model().train()
    embeddings = embed_scans(model, dataset, torch.device("cpu"), chunk=3)
    assert model.training, "embed_scans must restore train mode"
    assert set(embeddings) == set(data.patient_ids)
    model.eval()
    for pid in data.patient_ids:
        volume = dataset.resized_volume(pid)
        with torch.inference_mode():
            expected = model.encoder(to_model_input(np.asarray(volume, dtype=np.float32), ("brain",)))
        assert embeddings[pid].shape == (volume.shape[0], model.feature_dim)
        torch.testing.assert_close(embeddings[pid], expected, rtol=1e-4, atol=1e-5)


def test_sample_sequences_keeps_slice_order():
    embeddings = {"a": torch.arange(10.0).unsqueeze(1).repeat(1, 3), "b": torch.arange(3.0).unsqueeze(1)}
    fixed = sample_sequences({"a": embeddings["a"]}, ["a"], 4, False, np.random.default_rng(0))
    assert fixed[0, :, 0].tolist() == [0.0, 3.0, 6.0, 9.0]
    jittered = sample_sequences({"a": embeddings["a"]}, ["a", "a"], 5, True, np.random.default_rng(1))
    assert jittered.shape == (2, 5, 3)
    assert (jittered[:, 1:, 0] >= jittered[:, :-1, 0]).all()
    short = sample_sequences({"b": embeddings["b"]}, ["b"], 5, False, np.random.default_rng(0))
    assert set(short[0, :, 0].tolist()) == {0.0, 1.0, 2.0}


def toy_embeddings(n: int, rng: np.random.Generator) -> tuple[dict, dict]:
    """Scans of 12 slices; label 'any' (and subtype 1) is 1 when slices 4-7 carry a bump."""
    embeddings, labels = {}, {}
    for i in range(n):
        emb = torch.from_numpy(rng.normal(size=(12, 16)).astype(np.float32))
        y = np.zeros(6, dtype=np.float32)
        if i % 2:
            emb[4:8, :4] += 3.0
            y[[0, 1]] = 1.0
        embeddings[f"p{i}"], labels[f"p{i}"] = emb, y
    return embeddings, labels


class TinySequenceModel(CNNBiLSTM):
    """A CNNBiLSTM whose embeddings are 16-dimensional (the encoder is never used here)."""

    def __init__(self, members: int = 1) -> None:
        super().__init__(lstm_hidden=8, dropout=0.0)
        self.lstm_norm = torch.nn.LayerNorm(16)
        self.lstm = torch.nn.LSTM(16, 8, batch_first=True, bidirectional=True)
        self.extra_sequences = torch.nn.ModuleList(SequenceHalf(16, 6, 8, 1, 0.0, False) for _ in range(members - 1))


def test_sequence_stage_learns_and_leaves_the_cnn_alone(one_thread):
    torch.manual_seed(0)
    model = TinySequenceModel()
    embeddings, labels = toy_embeddings(32, np.random.default_rng(0))
    ids = sorted(embeddings)
    train_ids, val_ids = ids[:24], ids[24:]
    cnn_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("encoder", "slice_head"))}
    config = SequenceStageConfig(epochs=60, batch_size=8, lr=1e-2, patience=None)
    result = train_sequence_stage(model, embeddings, labels, train_ids, val_ids, seq_len=6, config=config)
    losses = [row["val_scan_loss"] for row in result.history]
    assert len(losses) == 60
    assert result.best_val_scan_loss == min(losses) < 0.5 * losses[0]
    assert all(p.requires_grad for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in cnn_before.items())
    x = sample_sequences(embeddings, val_ids, 6, False, np.random.default_rng(0))
    with torch.inference_mode():
        p = torch.sigmoid(model.sequence_logits(x))[:, 0].numpy()
    y = np.array([labels[pid][0] for pid in val_ids])
    assert p[y == 1].min() > p[y == 0].max()


def test_sequence_stage_stops_early_and_keeps_the_best_epoch(one_thread):
    model = TinySequenceModel()
    embeddings, labels = toy_embeddings(16, np.random.default_rng(1))
    ids = sorted(embeddings)
    config = SequenceStageConfig(epochs=200, batch_size=4, lr=5e-2, patience=3)
    result = train_sequence_stage(model, embeddings, labels, ids[:12], ids[12:], seq_len=6, config=config)
    assert len(result.history) < 200
    assert len(result.history) - result.best_epoch == 3
    target = torch.stack([torch.from_numpy(labels[pid]) for pid in ids[12:]])
    # validation reads every slice: the two interleaved samplings of 6 out of 12, max-combined
    with torch.inference_mode():
        per_sampling = [model.sequence_logits(embeddings[pid][torch.from_numpy(covering_indices(12, 6))])
                        for pid in ids[12:]]
        logits = torch.stack([rows.max(dim=0).values for rows in per_sampling])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target).item()
        torch.testing.assert_close(covering_logits(model, embeddings, ids[12:], 6), logits)
    assert loss == pytest.approx(result.best_val_scan_loss, rel=1e-5)


def test_each_member_trains_alone_and_member_0_as_a_one_member_model(one_thread):
    embeddings, labels = toy_embeddings(16, np.random.default_rng(4))
    ids = sorted(embeddings)
    config = SequenceStageConfig(epochs=4, batch_size=4, lr=1e-2, patience=None)
    torch.manual_seed(0)
    one = TinySequenceModel()
    torch.manual_seed(0)
    three = TinySequenceModel(members=3)
    three.load_state_dict({**three.state_dict(), **one.state_dict()})
    before = {k: v.clone() for k, v in three.state_dict().items()}
    result = train_sequence_stage(three, embeddings, labels, ids[:12], ids[12:], seq_len=6, config=config, member=1)
    changed = {k for k, v in three.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("extra_sequences.0.") for k in changed)
    assert all(p.requires_grad for p in three.parameters())
    with torch.inference_mode():
        val = covering_logits(three, embeddings, ids[12:], 6, member=1)
        target = torch.stack([torch.from_numpy(labels[pid]) for pid in ids[12:]])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(val, target).item()
    assert loss == pytest.approx(result.best_val_scan_loss, rel=1e-5)
    # member 0 of a three-member model trains exactly as a one-member model does
    first = train_sequence_stage(three, embeddings, labels, ids[:12], ids[12:], seq_len=6, config=config)
    alone = train_sequence_stage(one, embeddings, labels, ids[:12], ids[12:], seq_len=6, config=config)
    assert [r["val_scan_loss"] for r in first.history] == [r["val_scan_loss"] for r in alone.history]
    assert all(torch.equal(three.state_dict()[k], v) for k, v in one.state_dict().items())
    # another member draws other sequences (its own seed), so it learns other weights
    other = train_sequence_stage(three, embeddings, labels, ids[:12], ids[12:], seq_len=6, config=config, member=2)
    assert [r["val_scan_loss"] for r in other.history] != [r["val_scan_loss"] for r in first.history]


def test_sequence_stage_targets_are_the_or_of_the_sampled_slices(monkeypatch, one_thread):
    import ichlib.training.two_stage as two_stage

    embeddings, labels = toy_embeddings(16, np.random.default_rng(2))
    # blood (any + subtype 1) on slice 5 alone of each positive scan: a jittered draw of 4
    # out of 12 slices (one per 3-slice segment) reads it one time in three
    slice_labels = {pid: np.zeros((12, 6), dtype=np.float32) for pid in embeddings}
    for pid, y in labels.items():
        slice_labels[pid][5] = y
    drawn: list[tuple[list[str], list[np.ndarray]]] = []
    targets: list[torch.Tensor] = []
    draw = two_stage.draw_indices

    def recording_draw(embeddings, ids, *args):
        drawn.append((list(ids), draw(embeddings, ids, *args)))
        return drawn[-1][1]

    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def recording_bce(logits, target, pos_weight=None):
        targets.append(target.clone())
        return bce(logits, target, pos_weight=pos_weight)

    monkeypatch.setattr(two_stage, "draw_indices", recording_draw)
    monkeypatch.setattr(two_stage, "F", SimpleNamespace(binary_cross_entropy_with_logits=recording_bce))
    ids = sorted(embeddings)
    config = SequenceStageConfig(epochs=3, batch_size=4, patience=None)
    train_sequence_stage(TinySequenceModel(), embeddings, labels, ids[:12], ids[12:], seq_len=4,
                         config=config, slice_labels=slice_labels)
    steps = [t for i, t in enumerate(targets) if i % 4 != 3]  # each epoch: 3 steps, then validation
    assert len(steps) == len(drawn) == 9
    unseen_blood = 0
    for (batch, indices), target in zip(drawn, steps, strict=True):
        for pid, idx, row in zip(batch, indices, target, strict=True):
            np.testing.assert_array_equal(row.numpy(), slice_labels[pid][idx].max(axis=0))
            unseen_blood += int(labels[pid][0] == 1 and 5 not in idx.tolist())
    assert unseen_blood > 0  # positive patients whose draw missed the blood got target 0


def test_sequence_stage_refuses_missing_embeddings_and_bad_settings():
    model = TinySequenceModel()
    embeddings, labels = toy_embeddings(4, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="p9"):
        train_sequence_stage(model, embeddings, labels, ["p0", "p9"], ["p1"], seq_len=4)
    with pytest.raises(ConfigError, match="training and validation"):
        train_sequence_stage(model, embeddings, labels, [], ["p1"], seq_len=4)
    with pytest.raises(ConfigError):
        SequenceStageConfig(epochs=0)
    with pytest.raises(ConfigError):
        TrainConfig(data_dir=".", out_dir=".", sequence_epochs=0)
    assert {id(p) for p in sequence_parameters(model)} == {
        id(p) for m in (model.lstm_norm, model.lstm, model.scan_head) for p in m.parameters()}


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory):
    # 12 patients: the stratified split then puts a patient with blood in validation
    labels = {49 + i: labels_with(6, (i % 5) if i % 2 else None, 1, 4) for i in range(12)}
    data = write_ct_ich(tmp_path_factory.mktemp("two") / "ds", labels, size=32)
    out = tmp_path_factory.mktemp("run") / "run"
    config = TrainConfig(data_dir=str(data), out_dir=str(out), epochs=2, batch_size=4, img_size=32,
                         seq_len=4, lstm_hidden=16, val_fraction=0.25, test_fraction=0.25, n_boot=20,
                         progress=False, deterministic=True, cache_dir=str(out.parent / "cache"),
                         two_stage=True, sequence_epochs=5, sequence_members=3)
    torch.set_num_threads(1)
    return data, fit(config)


def test_fit_two_stage_writes_both_stages(two_stage_run):
    data, result = two_stage_run
    stage1 = load_checkpoint(result.out_dir / "stage1.pt")
    best = load_checkpoint(result.best_path)
    assert best["stage"] == "two-stage" and stage1["monitor"] == "slice_mean_auc"
    for key, value in stage1["model"].items():
        same = torch.equal(best["model"][key], value)
        assert same if key.startswith(("encoder", "slice_head")) else True
    changed = [k for k in stage1["model"] if k.startswith("lstm.")
               and not torch.equal(best["model"][k], stage1["model"][k])]
    assert changed, "stage 2 did not change the LSTM"
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["config"]["two_stage"] is True
    stage2 = metrics["training"]["sequence_stage"]
    assert 1 <= stage2["best_epoch"] <= stage2["epochs_run"] <= 5
    assert len(stage2["history"]) == stage2["epochs_run"]
    # every member trained, each on its own epoch; the checkpoint holds them all
    members = stage2["members"]
    assert [m["member"] for m in members] == list(range(3)) == list(range(best["model_config"]["sequence_members"]))
    assert all(1 <= m["best_epoch"] <= m["epochs_run"] <= 5 for m in members)
    assert stage2["train_seconds"] == pytest.approx(sum(m["seconds"] for m in members))
    for k in range(2):
        assert not torch.equal(best["model"][f"extra_sequences.{k}.lstm.weight_ih_l0"],
                               stage1["model"][f"extra_sequences.{k}.lstm.weight_ih_l0"])
    timing = metrics["training"]
    assert timing["epoch_seconds"] == pytest.approx(result.history["train_seconds"].sum())
    assert timing["total_seconds"] == pytest.approx(
        timing["epoch_seconds"] + stage2["embed_seconds"] + stage2["train_seconds"])
    history = result.history
    assert len(history) == 2 and history["train_slice_loss"].notna().all()
    # stage 1 keeps the epoch whose slice head ranks the validation slices best
    assert history["val_slice_mean_auc"].notna().all()
    assert stage1["epoch"] == int(history.loc[history["val_slice_mean_auc"].idxmax(), "epoch"])
    assert stage1["best_score"] == pytest.approx(history["val_slice_mean_auc"].max())
    scan = sorted(Path(data, "ct_scans").glob("*.nii"))[0]
    prediction = Predictor(result.best_path, device="cpu")(scan)
    assert set(prediction.probabilities) == set(metrics["labels"])


def test_cli_two_stage_flag_reaches_the_config(tmp_path, small_ct_ich, monkeypatch):
    seen = {}

    def fake_fit(config, resume=False, **kwargs):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr("ichlib.training.fit.fit", fake_fit)
    with pytest.raises(SystemExit):
        main(["train", "--data", str(small_ct_ich), "--out", str(tmp_path / "r"), "--two-stage",
              "--sequence-epochs", "7"])
    assert seen["config"].two_stage is True and seen["config"].sequence_epochs == 7


def test_slice_sampler_draws_the_asked_share_of_positives():
    labels = {"a": np.zeros((10, 6), np.float32), "b": np.zeros((10, 6), np.float32)}
    labels["b"][[3, 4], 0] = 1.0
    sampler = SliceSampler(labels, 0.5, np.random.default_rng(0))
    batch = sampler.draw(10)
    assert len(batch) == 10
    assert all(address in {("b", 3), ("b", 4)} for address in batch[:5])
    uniform = SliceSampler(labels, None, np.random.default_rng(0)).draw(400)
    share = np.mean([address in {("b", 3), ("b", 4)} for address in uniform])
    assert 0.04 < share < 0.2  # 2 of 20 slices
    no_positives = SliceSampler({"a": labels["a"]}, 0.5, np.random.default_rng(0))
    assert no_positives.positive_fraction is None and len(no_positives.draw(4)) == 4
    with pytest.raises(ConfigError):
        SliceSampler({}, 0.5, np.random.default_rng(0))
    with pytest.raises(ConfigError):
        SliceStageConfig(positive_fraction=1.5)


def test_height_matched_draws_follow_the_heights_of_the_blood():
    # blood only in the middle fifth of every scan; scans of different lengths
    labels = {}
    for i, n in enumerate((20, 30, 40, 50)):
        y = np.zeros((n, 6), np.float32)
        y[int(0.4 * n):int(0.6 * n), 0] = 1.0
        labels[f"p{i}"] = y
    sampler = SliceSampler(labels, 0.0, np.random.default_rng(0), matched_fraction=1.0)
    heights = np.array([(k + 0.5) / len(labels[pid]) for pid, k in sampler.draw(2000)])
    assert 0.35 < heights.min() and heights.max() < 0.65
    uniform = SliceSampler(labels, 0.0, np.random.default_rng(0)).draw(2000)
    assert np.mean([(k + 0.5) / len(labels[pid]) < 0.35 for pid, k in uniform]) > 0.25
    half = SliceSampler(labels, 0.5, np.random.default_rng(0), matched_fraction=0.5)
    assert half.matched_fraction == 0.5 and len(half.draw(10)) == 10
    # without blood there is nothing to match
    assert SliceSampler({"a": np.zeros((5, 6), np.float32)}, 0.5, np.random.default_rng(0), 0.5).matched_fraction == 0
    with pytest.raises(ConfigError):
        SliceStageConfig(matched_fraction=-0.1)


def test_slice_stage_trains_the_cnn_and_not_the_sequence_half(small_ct_ich, tmp_path, one_thread):
    data = read_ct_ich(small_ct_ich)
    train = ScanDataset(data, data.patient_ids, PreprocessConfig(img_size=32), tmp_path / "cache")
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stage = SliceStage(model, train, SliceStageConfig(epochs=2, batch_size=8), steps_per_epoch=3,
                       device=torch.device("cpu"))
    rows = [stage.train_epoch(epoch) for epoch in range(2)]
    assert all(np.isfinite(r["slice_loss"]) and r["slices_per_s"] > 0 for r in rows)
    after = model.state_dict()
    assert not torch.equal(after["encoder.conv1.weight"], before["encoder.conv1.weight"])
    assert not torch.equal(after["slice_head.weight"], before["slice_head.weight"])
    sequence_keys = [k for k in before if k.startswith(("lstm", "scan_head"))]
    assert sequence_keys and all(torch.equal(after[k], before[k]) for k in sequence_keys)
    assert stage.scheduler.last_epoch == 6


class StopAfterFirstEpoch(Exception):
    pass


def test_two_stage_resume_equals_an_uninterrupted_run(two_stage_run, tmp_path):
    data, reference = two_stage_run
    config = TrainConfig.from_dict({**json.loads(reference.metrics_path.read_text())["config"],
                                    "out_dir": str(tmp_path / "run")})

    def stop(epoch, row):
        if epoch == 1:
            raise StopAfterFirstEpoch

    with pytest.raises(StopAfterFirstEpoch):
        fit(config, on_epoch_end=stop)
    resumed = fit(config, resume=True)
    expected = load_checkpoint(reference.best_path)["model"]
    got = load_checkpoint(resumed.best_path)["model"]
    assert all(torch.equal(got[k], v) for k, v in expected.items())


def test_two_stage_refuses_torchrun(monkeypatch, tmp_path, small_ct_ich):
    import contextlib

    import ichlib.training.fit as train
    from ichlib.training.distributed import DistContext

    class SeveralProcesses(DistContext):
        @property
        def enabled(self) -> bool:
            return True

    @contextlib.contextmanager
    def fake_session(device, batch_size):
        yield SeveralProcesses()

    monkeypatch.setattr(train, "session", fake_session)
    config = TrainConfig(data_dir=str(small_ct_ich), out_dir=str(tmp_path / "r"), img_size=32, seq_len=4,
                         epochs=1, progress=False, two_stage=True, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="one process"):
        fit(config)


def test_stage_one_falls_back_to_the_slice_loss_without_blood_in_validation():
    from ichlib.training.log import QUIET
    from ichlib.training.strategies import _slice_task_monitor

    def prepared(has_blood: bool) -> SimpleNamespace:
        labels = np.zeros((5, 6))
        labels[2, 0] = float(has_blood)
        data = SimpleNamespace(slice_labels=lambda pid: labels)
        return SimpleNamespace(data=data, split={"val": ["a", "b"]})

    assert _slice_task_monitor(prepared(True), QUIET) == "slice_mean_auc"
    assert _slice_task_monitor(prepared(False), QUIET) == "slice_loss"
