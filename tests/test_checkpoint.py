"""Checkpoints: weights-only round trip, refusals, and no code execution on load."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ichlib.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    capture_rng_state,
    load_checkpoint,
    model_from_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from ichlib.errors import CheckpointError
from ichlib.labels import LABELS
from ichlib.model import CNNBiLSTM
from ichlib.preprocess.dataset import PreprocessConfig


def make_checkpoint(path: Path) -> tuple[CNNBiLSTM, Path]:
    torch.manual_seed(0)
    model = CNNBiLSTM(in_channels=3, lstm_hidden=8).eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    save_checkpoint(path, {
        "model": model.state_dict(), "model_config": model.model_config,
        "preprocess": PreprocessConfig(("brain", "subdural", "soft"), 32, 4).to_dict(),
        "optimizer": optimizer.state_dict(), "epoch": 3, "thresholds": dict.fromkeys(LABELS, 0.4),
        "config": {"windows": ["brain", "subdural", "soft"], "lr": 1e-3, "patience": None},
        "history": [{"epoch": 1, "val_loss": 0.5, "val_mean_auc": None}],
        "rng": capture_rng_state(), "data": "synthetic",
    })
    return model, path


def test_round_trip_with_weights_only(tmp_path):
    model, path = make_checkpoint(tmp_path / "run" / "best.pt")
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION
    assert raw["labels"] == list(LABELS) and "ichlib_version" in raw
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3 and ckpt["thresholds"]["any"] == 0.4
    rebuilt, preprocess = model_from_checkpoint(ckpt)
    assert preprocess == PreprocessConfig(("brain", "subdural", "soft"), 32, 4)
    assert not rebuilt.training
    x = torch.rand(2, 4, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x).scan_logits, model(x).scan_logits)
    assert not list(path.parent.glob(".*.tmp*"))  # the atomic write left nothing behind


def rewrite(path: Path, **changes) -> Path:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt.update(changes)
    torch.save(ckpt, path)
    return path


def test_different_labels_are_refused(tmp_path):
    _, path = make_checkpoint(tmp_path / "best.pt")
    swapped = list(LABELS)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    rewrite(path, labels=swapped)
    with pytest.raises(CheckpointError, match="labels") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "intraventricular" in str(info.value)


def test_unknown_format_version_is_refused(tmp_path):
    _, path = make_checkpoint(tmp_path / "best.pt")
    rewrite(path, format_version=99)
    with pytest.raises(CheckpointError, match="format_version 99") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_other_dicts_are_not_checkpoints(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not an ichlib checkpoint"):
        load_checkpoint(path)


class Payload:
    """Pickles to a call that would create a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "labels": list(LABELS),
               "model": Payload(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    # Sanity: the payload is live; unpickling it without the guard would run it.
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize(("content", "problem"), [
    (None, "not found"), (b"", "not a readable"), (b"not a zip at all" * 10, "not a readable")])
def test_missing_and_junk_files(tmp_path, content, problem):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=problem) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_truncated_checkpoint(tmp_path):
    _, path = make_checkpoint(tmp_path / "best.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_unsafe_values_are_refused_at_save_time(tmp_path):
    for bad in (np.zeros(3), Path("x"), np.float64(1.0)):
        with pytest.raises(CheckpointError, match="cannot store"):
            save_checkpoint(tmp_path / "x.pt", {"model": {}, "model_config": {}, "preprocess": {},
                                                "extra": {"value": bad}})
    assert not (tmp_path / "x.pt").exists()


def test_weights_that_do_not_fit_the_config(tmp_path):
    _, path = make_checkpoint(tmp_path / "best.pt")
    ckpt = load_checkpoint(path)
    ckpt["model_config"] = {**ckpt["model_config"], "lstm_hidden": 16}
    with pytest.raises(CheckpointError, match="does not match"):
        model_from_checkpoint(ckpt)


def test_rng_state_round_trip(tmp_path):
    model = CNNBiLSTM(lstm_hidden=8)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = capture_rng_state()
    path = tmp_path / "rng.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_config": model.model_config,
                           "preprocess": PreprocessConfig(img_size=16, seq_len=2).to_dict(), "rng": state})
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(load_checkpoint(path)["rng"])
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]


@pytest.mark.parametrize("pooling", ["max", "attention", "last"])
def test_pooling_travels_in_the_model_config(tmp_path, pooling):
    torch.manual_seed(0)
    model = CNNBiLSTM(lstm_hidden=8, pooling=pooling).eval()
    path = save_checkpoint(tmp_path / "best.pt", {
        "model": model.state_dict(), "model_config": model.model_config,
        "preprocess": PreprocessConfig(("brain",), 32, 4).to_dict()})
    rebuilt, _ = model_from_checkpoint(load_checkpoint(path))
    assert rebuilt.pooling == pooling and rebuilt.model_config["pooling"] == pooling
    x = torch.rand(2, 4, 1, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x).scan_logits, model(x).scan_logits)


def test_sequence_members_travel_in_the_model_config(tmp_path):
    torch.manual_seed(0)
    model = CNNBiLSTM(lstm_hidden=8, sequence_members=3).eval()
    path = save_checkpoint(tmp_path / "best.pt", {
        "model": model.state_dict(), "model_config": model.model_config,
        "preprocess": PreprocessConfig(("brain",), 32, 4).to_dict()})
    rebuilt, _ = model_from_checkpoint(load_checkpoint(path))
    assert rebuilt.sequence_members == 3
    x = torch.rand(2, 4, 1, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x).scan_logits, model(x).scan_logits)
    # a one-member config cannot silently drop the other members' weights
    one = save_checkpoint(tmp_path / "one.pt", {
        "model": model.state_dict(), "model_config": {**model.model_config, "sequence_members": 1},
        "preprocess": PreprocessConfig(("brain",), 32, 4).to_dict()})
    with pytest.raises(CheckpointError, match="does not match its model configuration"):
        model_from_checkpoint(load_checkpoint(one), source=one)


def test_checkpoint_without_pooling_is_read_as_last_state_pooling(tmp_path):
    # Checkpoints from before pooling was configurable read the BiLSTM's final states. Their
    # weights also fit max pooling, so the key's absence must not silently mean the default.
    torch.manual_seed(0)
    model = CNNBiLSTM(lstm_hidden=8, pooling="last").eval()
    old_config = {k: v for k, v in model.model_config.items() if k != "pooling"}
    path = save_checkpoint(tmp_path / "old.pt", {
        "model": model.state_dict(), "model_config": old_config,
        "preprocess": PreprocessConfig(("brain",), 32, 4).to_dict()})
    rebuilt, _ = model_from_checkpoint(load_checkpoint(path))
    assert rebuilt.pooling == "last"
    x = torch.rand(2, 4, 1, 32, 32)
    with torch.inference_mode():
        expected = model(x).scan_logits
        torch.testing.assert_close(rebuilt(x).scan_logits, expected)
        as_max = CNNBiLSTM(lstm_hidden=8, pooling="max").eval()
        as_max.load_state_dict(model.state_dict())
        assert not torch.allclose(as_max(x).scan_logits, expected)
