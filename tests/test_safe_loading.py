"""Safe loading: nothing ichlib reads can run code, and foreign checkpoints are refused.

tests/test_checkpoint.py covers the checkpoint format itself (round trip, a payload
written with torch.save and with plain pickle, junk and truncated files). This file is
the reliability view: the source-level guarantee (every ``torch.load`` is weights-only,
no pickle anywhere), a payload that would run a shell command, refused on every entry
point (``load_checkpoint``, ``ichlib predict --checkpoint``, ``fit(resume=True)``, the
volume cache), and the messages for a checkpoint of another version or other labels.
"""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import ichlib
from ichlib.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint, save_checkpoint
from ichlib.cli import main
from ichlib.errors import CheckpointError
from ichlib.io.nifti import save_volume
from ichlib.labels import LABELS
from ichlib.model import CNNBiLSTM
from ichlib.preprocess.cache import CacheWarning, VolumeCache
from ichlib.preprocess.dataset import PreprocessConfig
from ichlib.training.config import TrainConfig
from ichlib.training.fit import fit
from tests.conftest import labels_with, write_ct_ich

SOURCES = sorted(Path(ichlib.__file__).parent.glob("*.py"))


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call ``X.name(...)`` or ``name(...)`` in the ichlib sources."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called == name:
                    found.append((path, node))
    return found


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else ast.unparse(kw.value)
    return None


# --- source-level guarantees ------------------------------------------------------------

def test_every_torch_load_is_weights_only():
    loads = [(p, c) for p, c in _calls("load")
             if isinstance(c.func, ast.Attribute) and ast.unparse(c.func.value) == "torch"]
    assert loads, "expected at least the one in ichlib/checkpoint.py"
    bad = [f"{p.name}:{c.lineno}: {ast.unparse(c)}" for p, c in loads if _keyword(c, "weights_only") is not True]
    assert not bad, "torch.load without weights_only=True:\n" + "\n".join(bad)
    # The text search agrees with the parse (nothing hidden behind an alias).
    text_hits = sum(line.count("torch.load(") for p in SOURCES for line in p.read_text().splitlines()
                    if not line.lstrip().startswith(("#", '"', "'")) and "``" not in line)
    assert text_hits == len(loads)


def test_no_pickle_loading_anywhere():
    pickled = [f"{p.name}:{c.lineno}" for name in ("loads", "Unpickler") for p, c in _calls(name)
               if isinstance(c.func, ast.Attribute) and ast.unparse(c.func.value) in ("pickle", "dill")]
    pickled += [f"{p.name}:{c.lineno}" for p, c in _calls("load")
                if isinstance(c.func, ast.Attribute) and ast.unparse(c.func.value) in ("pickle", "joblib", "dill")]
    allow = [f"{p.name}:{c.lineno}" for p, c in _calls("load") if _keyword(c, "allow_pickle") not in (None, False)]
    assert not pickled and not allow, pickled + allow


# --- a checkpoint that would run a shell command ----------------------------------------

class ShellPayload:
    """Unpickling this runs ``touch MARKER`` (it would, without weights_only)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def evil_checkpoint(path: Path, marker: Path, where: str) -> Path:
    """A well-formed-looking checkpoint with the payload hidden at ``where``."""
    torch.manual_seed(0)
    model = CNNBiLSTM(lstm_hidden=8)
    ckpt = {"format": FORMAT, "format_version": FORMAT_VERSION, "ichlib_version": ichlib.__version__,
            "labels": list(LABELS), "model": model.state_dict(), "model_config": model.model_config,
            "preprocess": PreprocessConfig(img_size=16, seq_len=2).to_dict(), "thresholds": {}}
    if where == "top_level":
        ckpt["history"] = [ShellPayload(marker)]
    elif where == "in_state_dict":
        ckpt["model"] = {**ckpt["model"], "lstm.weight_ih_l0": ShellPayload(marker)}
    torch.save(ckpt, path)
    return path


@pytest.fixture
def scan(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    return save_volume(tmp_path / "scan.nii", rng.normal(30, 10, (3, 16, 16)))


WHERE = ["top_level", "in_state_dict"]


def test_the_payload_is_live(tmp_path):
    """Sanity: plain unpickling would run the command; the tests below would catch a regression."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(ShellPayload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("where", WHERE)
def test_load_checkpoint_refuses_code(tmp_path, where):
    marker = tmp_path / "pwned"
    path = evil_checkpoint(tmp_path / "evil.pt", marker, where)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refused to load")
    assert "Python objects" in message and "system" in message  # names the smuggled global
    assert not marker.exists()


@pytest.mark.parametrize("where", WHERE)
def test_cli_predict_refuses_code(tmp_path, scan, capsys, where):
    marker = tmp_path / "pwned"
    path = evil_checkpoint(tmp_path / "evil.pt", marker, where)
    status = main(["predict", "--checkpoint", str(path), "--device", "cpu", str(scan)])
    captured = capsys.readouterr()
    assert status == 1 and captured.out == ""
    assert f"ichlib predict: error: {path}: refused to load" in captured.err
    assert not marker.exists()


def test_resume_refuses_code(tmp_path):
    data = write_ct_ich(tmp_path / "ds", {49 + i: labels_with(3) for i in range(3)}, size=16)
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "pwned"
    evil_checkpoint(run / "last.pt", marker, "top_level")
    config = TrainConfig(data_dir=str(data), out_dir=str(run), epochs=1, batch_size=2, img_size=16,
                         seq_len=2, lstm_hidden=8, val_fraction=1 / 3, test_fraction=1 / 3, n_boot=5,
                         progress=False, amp="off", device="cpu", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match="last.pt: refused to load"):
        fit(config, resume=True)
    assert not marker.exists()


def test_a_poisoned_cache_entry_is_rebuilt_not_run(tmp_path, scan):
    """The volume cache is .npy: an object array in it is never unpickled."""
    marker = tmp_path / "pwned"
    cache = VolumeCache(tmp_path / "cache", 16)
    entry = cache.path_for(scan)
    entry.parent.mkdir()
    np.save(entry, np.array([ShellPayload(marker)], dtype=object), allow_pickle=True)
    with pytest.warns(CacheWarning, match="is unreadable"):
        volume = cache.get(scan)
    assert volume.dtype == np.float16 and volume.shape == (3, 16, 16)
    assert not marker.exists()


# --- checkpoints from another version or with other labels ------------------------------

def good_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = CNNBiLSTM(lstm_hidden=8)
    return save_checkpoint(path, {"model": model.state_dict(), "model_config": model.model_config,
                                  "preprocess": PreprocessConfig(img_size=16, seq_len=2).to_dict()})


def _swap(labels: list[str]) -> list[str]:
    out = list(labels)
    out[1], out[2] = out[2], out[1]
    return out


FOREIGN = {
    "newer_format_version": ({"format_version": FORMAT_VERSION + 1},
                             f"format_version {FORMAT_VERSION + 1} is not supported.*reads version "
                             f"{FORMAT_VERSION}"),
    "older_format_version": ({"format_version": 0, "ichlib_version": "0.0.1"},
                             "format_version 0 is not supported.*written by ichlib 0.0.1"),
    "no_format_version": ({"format_version": None}, "format_version None is not supported"),
    "labels_reordered": ({"labels": _swap(list(LABELS))}, r"labels \[.*\] differ from this ichlib's"),
    "label_missing": ({"labels": list(LABELS)[:-1]}, "differ from this ichlib's"),
    "other_format": ({"format": "someone-elses-checkpoint"}, "not an ichlib checkpoint.*someone-elses"),
}


@pytest.mark.parametrize("case", list(FOREIGN), ids=list(FOREIGN))
def test_a_foreign_checkpoint_is_refused_saying_what_differs(tmp_path, scan, capsys, case):
    changes, problem = FOREIGN[case]
    path = good_checkpoint(tmp_path / "best.pt")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt.update(changes)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=problem) as info:
        load_checkpoint(path)
    assert info.value.path == str(path)
    if case.startswith("label"):  # the message shows both lists, so the difference is visible
        assert str(changes["labels"]) in str(info.value) and str(list(LABELS)) in str(info.value)
    status = main(["predict", "--checkpoint", str(path), "--device", "cpu", str(scan)])
    err = capsys.readouterr().err
    assert status == 1 and str(path) in err

