"""Checkpoints as plain dicts that ``torch.load(..., weights_only=True)`` can read.

A checkpoint holds only tensors, dicts, lists, strings, numbers, booleans and None, so
loading one never runs code from the file. Keys::

    format            "ichlib-checkpoint"
    format_version    1
    ichlib_version    version that wrote it
    labels            list(LABELS): the column order of every output
    model             state_dict of CNNBiLSTM
    model_config      CNNBiLSTM constructor arguments
    preprocess        PreprocessConfig.to_dict()
    thresholds        {label: float} chosen on validation (may be empty)
    data              "synthetic" or "real"
    optimizer, lr_scheduler, epoch, config, best_score, history, rng   (training state)
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ichlib.errors import CheckpointError, IchlibError
from ichlib.io.atomic import atomic_path
from ichlib.io.sniff import check_checkpoint_file
from ichlib.labels import LABELS
from ichlib.model import BACKBONES, CNNBiLSTM
from ichlib.preprocess.dataset import PreprocessConfig
from ichlib.preprocess.windowing import WINDOWS
from ichlib.version import __version__

FORMAT = "ichlib-checkpoint"
FORMAT_VERSION = 1
_REQUIRED = ("model", "model_config", "preprocess")
#: The pooling of checkpoints whose model_config predates the ``pooling`` key.
LEGACY_POOLING = "last"
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def save_checkpoint(path: str | os.PathLike, checkpoint: Mapping) -> Path:
    """Write ``checkpoint`` atomically with ``torch.save``, adding the format fields.

    Raises:
        CheckpointError: If a value is not weights-only safe (e.g. a numpy array or a
            Path); the message names the key. Nothing is written then.
    """
    path = Path(path)
    ckpt = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "ichlib_version": __version__, "labels": list(LABELS), **checkpoint}
    _check_plain(ckpt, path, "checkpoint")
    with atomic_path(path, suffix=".pt") as tmp:
        try:
            torch.save(ckpt, tmp)
        except RuntimeError as exc:  # torch's zip writer reports a failed write this way
            if not any(s in str(exc) for s in _ZIP_WRITER_FAILURES):
                raise
            raise _write_failure(tmp.parent, str(exc)) from exc
    return path


#: Texts of the RuntimeError torch's zip writer raises when a write fails (full disk, I/O).
_ZIP_WRITER_FAILURES = ("PytorchStreamWriter", "write failed", "inline_container", "unexpected pos")


def _write_failure(folder: Path, text: str) -> OSError:
    """The OSError to raise for a failed ``torch.save`` (its zip writer loses the errno;
    :func:`~ichlib.io.atomic.atomic_path` asks the file system why)."""
    return OSError(f"torch.save failed: {text.strip().splitlines()[-1]}")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate a checkpoint, always with ``weights_only=True``, onto the CPU.

    Raises:
        CheckpointError: Naming the file and the problem: missing, not a PyTorch file (and
            what it is instead; :func:`ichlib.io.sniff.check_checkpoint_file`),
            holding Python objects (refused unexecuted), not an ichlib checkpoint, an
            unknown ``format_version``, or labels that differ from :data:`LABELS`.
    """
    path = Path(path)
    check_checkpoint_file(path)  # missing, a folder, a CSV, an image, empty, truncated
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(exc)
        if "global" in detail.lower() or "reduce" in detail.lower():
            raise CheckpointError(path, "refused to load: the file holds Python objects, not only "
                                  f"tensors and plain data ({detail}); it may be unsafe, and ichlib "
                                  "never loads a checkpoint with weights_only=False") from exc
        raise CheckpointError(path, f"not a readable PyTorch checkpoint ({detail})") from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(path, f"not a readable PyTorch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r})") from exc
    except Exception as exc:  # anything else torch.load can raise on junk
        raise CheckpointError(path, f"could not load the checkpoint ({type(exc).__name__}: {exc})") from exc
    _validate_checkpoint(ckpt, path)
    return ckpt


def _validate_checkpoint(ckpt: object, path: str | os.PathLike | None = None) -> None:
    """Check format, version, labels and required keys of a loaded checkpoint.

    Raises:
        CheckpointError: Saying what differs.
    """
    if not isinstance(ckpt, dict):
        raise CheckpointError(path, f"holds a {type(ckpt).__name__}, not an ichlib checkpoint dict")
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(path, f"not an ichlib checkpoint (format is {ckpt.get('format')!r}, "
                              f"expected {FORMAT!r})")
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(path, f"checkpoint format_version {version!r} is not supported by this "
                              f"ichlib, which reads version {FORMAT_VERSION}; written by ichlib "
                              f"{ckpt.get('ichlib_version', 'unknown')}")
    labels = ckpt.get("labels")
    if labels != list(LABELS):
        raise CheckpointError(path, f"checkpoint labels {labels} differ from this ichlib's "
                              f"{list(LABELS)}; its outputs would be read under the wrong names")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(path, f"checkpoint lacks {', '.join(missing)}")
    problem = (_model_config_problem(ckpt["model_config"]) or _preprocess_problem(ckpt)
               or _thresholds_problem(ckpt.get("thresholds")) or _weights_problem(ckpt["model"])
               or _data_problem(ckpt.get("data")))
    if problem:
        raise CheckpointError(path, problem)


#: Plausible ranges of a checkpoint's settings: (low, high) per key.
_MODEL_LIMITS = {"in_channels": (1, 16), "n_labels": (len(LABELS), len(LABELS)),
                 "lstm_hidden": (1, 8192), "lstm_layers": (1, 8)}
_PREPROCESS_LIMITS = {"img_size": (8, 4096), "seq_len": (1, 1024)}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _out_of_range(values: Mapping, limits: dict[str, tuple[int, int]], where: str) -> str | None:
    for key, (low, high) in limits.items():
        value = values.get(key)
        if not _is_int(value) or not low <= value <= high:
            return (f"{where}[{key!r}] is {value!r}; expected a whole number in [{low}, {high}] "
                    "(the file is damaged or not from ichlib)")
    return None


def _model_config_problem(config: object) -> str | None:
    if not isinstance(config, Mapping):
        return f"model_config is a {type(config).__name__}, not a dict"
    if config.get("backbone") not in BACKBONES:
        return f"model_config backbone {config.get('backbone')!r} is not one of {', '.join(BACKBONES)}"
    dropout = config.get("dropout", 0.0)
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        return f"model_config dropout {dropout!r} is not in [0, 1)"
    return _out_of_range(config, _MODEL_LIMITS, "model_config")


def _preprocess_problem(ckpt: Mapping) -> str | None:
    preprocess = ckpt["preprocess"]
    if not isinstance(preprocess, Mapping):
        return f"preprocess is a {type(preprocess).__name__}, not a dict"
    problem = _out_of_range(preprocess, _PREPROCESS_LIMITS, "preprocess")
    if problem:
        return problem
    windows = preprocess.get("windows")
    if not isinstance(windows, list) or not all(isinstance(w, str) and w in WINDOWS for w in windows):
        return f"preprocess windows {windows!r} are not names among {', '.join(WINDOWS)}"
    channels = ckpt["model_config"]["in_channels"]
    if len(windows) != channels:
        return f"preprocess has {len(windows)} window(s) {windows} but the model takes {channels} channel(s)"
    return None


def _thresholds_problem(thresholds: object) -> str | None:
    if thresholds is None:
        return None
    if not isinstance(thresholds, Mapping):
        return f"thresholds is a {type(thresholds).__name__}, not a dict of label: probability"
    for label, value in thresholds.items():
        if label not in LABELS:
            return f"thresholds name an unknown label {label!r}; labels are {', '.join(LABELS)}"
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            return f"threshold of {label!r} is {value!r}, not a probability in [0, 1]"
    return None


def _weights_problem(state: object) -> str | None:
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "model is not a state dict of tensors"
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        return (f"{len(bad)} weight tensor(s) hold NaN or Inf (e.g. {bad[0]}); the model would "
                "predict NaN (a diverged or damaged run)")
    return None


def _data_problem(data: object) -> str | None:
    if data is not None and data not in ("synthetic", "real"):
        return f"data is {data!r}; expected 'synthetic' or 'real'"
    return None


def model_from_checkpoint(ckpt: Mapping, device: str | torch.device = "cpu",
                          source: str | os.PathLike | None = None) -> tuple[CNNBiLSTM, PreprocessConfig]:
    """Rebuild the model (in eval mode) and its preprocessing from a loaded checkpoint.

    A ``model_config`` without ``pooling`` comes from an ichlib whose scan head read the
    BiLSTM's last states, and is rebuilt with ``pooling="last"``.

    Args:
        ckpt: From :func:`load_checkpoint`.
        device: Where to put the model.
        source: The checkpoint file, named in errors.

    Raises:
        CheckpointError: If the weights do not fit the stored model configuration.
    """
    try:
        model = CNNBiLSTM(**{"pooling": LEGACY_POOLING, **ckpt["model_config"], "pretrained": False})
        model.load_state_dict(ckpt["model"])
        preprocess = PreprocessConfig.from_dict(ckpt["preprocess"])
    except (RuntimeError, TypeError, KeyError, ValueError, IchlibError) as exc:
        raise CheckpointError(source, f"checkpoint does not match its model configuration "
                              f"{ckpt.get('model_config')} ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:500]})") from exc
    return model.to(device).eval(), preprocess


def capture_rng_state() -> dict:
    """The torch, CUDA, numpy (global) and Python ``random`` states, weights-only safe."""
    keys, pos, has_gauss, cached = np.random.get_state()[1:]
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": [int(v) for v in internal],
                   "gauss": None if gauss is None else float(gauss)},
    }


def restore_rng_state(state: Mapping) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def _unpickler_detail(exc: Exception) -> str:
    """The informative part of torch's weights-only error (not its advice to disable it)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        rest = text.split(marker, 1)[1].strip()
        return rest.split("\n")[0].split(". Please")[0].strip() or "unreadable pickle"
    # A blocked module (os, posix, subprocess, ...) comes as "Trying to load unsupported
    # GLOBAL posix.system whose module posix is blocked", after torch's advice.
    blocked = [line.strip() for line in text.splitlines() if "GLOBAL" in line]
    if blocked:
        return blocked[0]
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _check_plain(value: object, path: Path, where: str) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(path, f"cannot store key {key!r} of {where}: keys must be str or int")
            _check_plain(item, path, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, path, f"{where}[{i}]")
    elif isinstance(value, np.generic) or not isinstance(value, _PLAIN):  # np.float64 is a float
        raise CheckpointError(path, f"cannot store {where}, a {type(value).__name__}: checkpoints hold "
                              "only tensors, dicts, lists, str, int, float, bool and None")
