"""Prediction on new scans with a trained checkpoint.

Every preprocessing setting (windows, image size, number of slices ``S``) comes from the
checkpoint, so a scan is prepared exactly as in training. Every slice of the scan counts:
the CNN reads all ``N`` slices, the BiLSTM reads ``ceil(N / S)`` interleaved samplings of
``S`` slices spaced as in training (:func:`ichlib.preprocess.sampling.covering_indices`), and the
patient-level logits of the samplings are combined by their maximum
(:meth:`ichlib.model.CNNBiLSTM.forward_scan`). Blood on a single slice, wherever it is,
reaches the prediction. Per-slice probabilities are reported for every slice, by its
1-based CT-ICH ``SliceNumber``.

Inference runs under ``torch.inference_mode()`` in channels-last format, with bfloat16
autocast where it is faster (``amp="auto"``; see :func:`ichlib.device.resolve_amp`);
``amp="off"`` is plain float32. How far bf16 moves the probabilities, and the speed of
each path, are measured in ``benchmarks/bench_predict.py`` (``benchmarks/RESULTS.md``).

This module does not import the training stack.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ichlib.checkpoint import load_checkpoint, model_from_checkpoint
from ichlib.device import autocast, resolve_amp, resolve_device
from ichlib.errors import DataError, IchlibError
from ichlib.io.load import load_volume
from ichlib.io.volume import Volume
from ichlib.labels import LABELS
from ichlib.model import CNNBiLSTM
from ichlib.preprocess.dataset import PreprocessConfig, prepare_scan
from ichlib.preprocess.sampling import covering_indices

if TYPE_CHECKING:
    import pandas as pd

ScanInput = str | os.PathLike | Volume | np.ndarray


@dataclass
class ScanPrediction:
    """The model's output for one scan.

    Attributes:
        path: The scan file (None for an array).
        probabilities: Patient-level probability per label name.
        slice_numbers: 1-based SliceNumber of every slice of the scan (``1 .. N``).
        slice_probabilities: ``[N, 6]`` slice-head probabilities; columns as LABELS.
        thresholds: Per-label thresholds chosen on validation when the model was trained
            (empty if the checkpoint has none).
        trained_on: ``"synthetic"`` or ``"real"``: the data the model was trained on.
    """

    path: str | None
    probabilities: dict[str, float]
    slice_numbers: list[int]
    slice_probabilities: np.ndarray
    thresholds: dict[str, float] = field(default_factory=dict)
    trained_on: str = "real"

    @property
    def positive(self) -> dict[str, bool]:
        """``probability >= threshold`` per label (labels without a threshold are left out)."""
        return {label: self.probabilities[label] >= t for label, t in self.thresholds.items()}

    def slice_table(self) -> pd.DataFrame:
        """One row per slice: ``SliceNumber`` and a probability column per label."""
        import pandas as pd  # lazy: start-up time (ichlib predict prints without pandas)

        table = pd.DataFrame(self.slice_probabilities, columns=list(LABELS))
        table.insert(0, "SliceNumber", self.slice_numbers)
        return table

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "path": self.path,
            "trained_on": self.trained_on,
            "probabilities": dict(self.probabilities),
            "thresholds": dict(self.thresholds),
            "positive": self.positive,
            "slices": [{"SliceNumber": int(n), **dict(zip(LABELS, map(float, row), strict=True))}
                       for n, row in zip(self.slice_numbers, self.slice_probabilities, strict=True)],
        }


@dataclass(frozen=True)
class PredictionError:
    """A scan that could not be predicted.

    Attributes:
        path: The scan.
        error: What went wrong (the file is named in it).
    """

    path: str
    error: str

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"path": self.path, "error": self.error}


def predict_scan(model: CNNBiLSTM, config: PreprocessConfig, path_or_hu: ScanInput,
                 device: str | torch.device = "cpu", amp: str = "auto",
                 thresholds: Mapping[str, float] | None = None,
                 trained_on: str = "real") -> ScanPrediction:
    """Predict one scan from all its slices (see the module docstring).

    Args:
        model: A trained model (it is put in eval mode).
        config: The checkpoint's preprocessing (:func:`ichlib.checkpoint.model_from_checkpoint`).
        path_or_hu: A NIfTI path, a :class:`~ichlib.io.volume.Volume`, or a HU array
            ``[N, H, W]`` (slice ``k`` is SliceNumber ``k + 1``).
        device: Where ``model`` is.
        amp: ``"auto"``, ``"bf16"`` or ``"off"`` (float32); see :func:`ichlib.device.resolve_amp`.
        thresholds: Per-label thresholds to report ``positive`` against.
        trained_on: Recorded in the result (``"synthetic"`` or ``"real"``).

    Raises:
        DataError: If the scan cannot be read or is not a 3D finite HU volume.
    """
    path: str | None = None
    if isinstance(path_or_hu, Volume):
        hu, path = path_or_hu.hu, (str(path_or_hu.path) if path_or_hu.path else None)
    elif isinstance(path_or_hu, np.ndarray):
        hu = path_or_hu
    else:
        path = str(path_or_hu)
        hu = load_volume(path_or_hu).hu
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise DataError(path, f"expected a HU volume [slices, H, W], got shape {hu.shape}")
    if not np.isfinite(hu).all():
        raise DataError(path, "volume holds NaN or Inf values")
    device = torch.device(device)
    x, indices = prepare_scan(hu, config, np.arange(hu.shape[0]))
    samplings = covering_indices(hu.shape[0], config.seq_len)
    model.eval()
    # Outside inference mode: where bf16's speed must be measured first, that runs here.
    amp_dtype = resolve_amp(amp, device, inference=True)
    with torch.inference_mode(), autocast(device, amp_dtype):
        output = model.forward_scan(x.to(device), samplings)
    scan = torch.sigmoid(output.scan_logits.float())[0].cpu().numpy()
    slices = torch.sigmoid(output.slice_logits.float())[0].cpu().numpy()
    if not (np.isfinite(scan).all() and np.isfinite(slices).all()):
        raise IchlibError(f"{path or '<array>'}: the model's output is NaN or Inf; no probability "
                          "is reported (are the checkpoint's weights damaged?)")
    return ScanPrediction(
        path=path,
        probabilities=dict(zip(LABELS, map(float, scan), strict=True)),
        slice_numbers=[int(i) + 1 for i in indices],
        slice_probabilities=slices.astype(np.float64),
        thresholds=dict(thresholds or {}),
        trained_on=trained_on,
    )


class Predictor:
    """A checkpoint loaded once, ready to predict many scans.

    Args:
        checkpoint: Path of a checkpoint, or a dict from :func:`ichlib.checkpoint.load_checkpoint`.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ...
        amp: ``"auto"``, ``"bf16"`` or ``"off"`` (float32).
        channels_last: Run the CNN in channels-last format.
        source: The checkpoint file, named in errors when ``checkpoint`` is a dict.
    """

    def __init__(self, checkpoint: str | os.PathLike | Mapping, device: str = "auto",
                 amp: str = "auto", channels_last: bool = True,
                 source: str | os.PathLike | None = None) -> None:
        ckpt = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint)
        source = source if isinstance(checkpoint, Mapping) else checkpoint
        self.device = resolve_device(device)
        self.model, self.preprocess = model_from_checkpoint(ckpt, self.device, source=source)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.amp = amp
        self.thresholds = {k: float(v) for k, v in dict(ckpt.get("thresholds") or {}).items()}
        self.trained_on = str(ckpt.get("data", "real"))

    def __call__(self, path_or_hu: ScanInput) -> ScanPrediction:
        """Predict one scan (see :func:`predict_scan`)."""
        return predict_scan(self.model, self.preprocess, path_or_hu, self.device, self.amp,
                            self.thresholds, self.trained_on)


def predict_files(checkpoint: str | os.PathLike | Mapping, paths: Iterable[str | os.PathLike],
                  device: str = "auto", amp: str = "auto", source: str | os.PathLike | None = None
                  ) -> tuple[list[ScanPrediction], list[PredictionError]]:
    """Predict several scans; a bad scan is reported and the others are still predicted.

    Args:
        checkpoint: Checkpoint path or loaded dict (a bad checkpoint raises
            :class:`~ichlib.errors.CheckpointError`: nothing can be predicted then).
        paths: NIfTI files.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        amp: ``"auto"``, ``"bf16"`` or ``"off"``.
        source: The checkpoint file, named in errors when ``checkpoint`` is a dict.

    Returns:
        The predictions (in input order, good scans only) and one error per bad scan.
    """
    predictor = Predictor(checkpoint, device=device, amp=amp, source=source)
    predictions: list[ScanPrediction] = []
    errors: list[PredictionError] = []
    for path in paths:
        try:
            predictions.append(predictor(path))
        except IchlibError as exc:
            message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            errors.append(PredictionError(str(path), message))
        except Exception as exc:  # an unexpected failure on one scan must not stop the others
            errors.append(PredictionError(str(path), f"{path}: {type(exc).__name__}: {exc}"))
    return predictions, errors


#: The note under the patient-level table: where the thresholds come from.
THRESHOLD_NOTE = ("* chosen per label on the validation split when the model was trained (Youden's J; "
                  "0.5 where validation had one class); POSITIVE: probability >= threshold")
#: The note under a prediction of a model trained on the synthetic phantom.
SYNTHETIC_NOTE = ("SYNTHETIC: the model was trained on the synthetic phantom; these results have "
                  "no clinical meaning")
#: The note under a prediction of a model trained on other data.
RESEARCH_NOTE = "research code, not a medical device: not for clinical use"


def format_prediction(prediction: ScanPrediction, slices: bool = False) -> str:
    """Human-readable text of one scan's prediction.

    First the patient-level table (:func:`_patient_lines`): each label's probability, its
    threshold and the call, ``POSITIVE`` or ``negative``. Then one line on where the thresholds
    come from (:data:`THRESHOLD_NOTE`) and one on the data the model was trained on
    (:data:`SYNTHETIC_NOTE` for the phantom).

    Args:
        prediction: One scan's prediction.
        slices: Also print the per-slice table (slice head, one row per slice by
            SliceNumber); otherwise one line says how many slices it has.
    """
    lines = [f"{prediction.path or '<array>'}"]
    lines += ["  " + line for line in _patient_lines(prediction)]
    lines.append("  " + (THRESHOLD_NOTE if prediction.thresholds else
                         "* the checkpoint holds no thresholds: no label is called POSITIVE or negative"))
    lines.append("  " + (SYNTHETIC_NOTE if prediction.trained_on == "synthetic" else RESEARCH_NOTE))
    if slices:
        lines.append("  per-slice probability (slice head):")
        lines += ["    " + line for line in _slice_lines(prediction)]
    else:
        lines.append(f"  per-slice probabilities of the {len(prediction.slice_numbers)} slices: "
                     "not shown (ichlib predict --slices shows them)")
    return "\n".join(lines)


def _patient_lines(prediction: ScanPrediction) -> list[str]:
    """The patient-level table: ``label``, ``probability``, ``threshold*`` and ``call`` columns.

    The call is ``POSITIVE`` when ``probability >= threshold``, else ``negative``; a label
    without a threshold shows ``n/a`` and ``-``.
    """
    positive = prediction.positive
    rows = [["label", "probability", "threshold*", "call"]]
    for label in LABELS:
        t = prediction.thresholds.get(label)
        call = "-" if t is None else ("POSITIVE" if positive[label] else "negative")
        rows.append([label, f"{prediction.probabilities[label]:.4f}", "n/a" if t is None else f"{t:.4f}",
                     call])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join([row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2]),
                       row[3]]).rstrip() for row in rows]


def _slice_lines(prediction: ScanPrediction) -> list[str]:
    """The per-slice table as right-aligned text columns: ``SliceNumber`` and one per label."""
    rows = [["SliceNumber", *LABELS]]
    rows += [[str(n), *(f"{p:.4f}" for p in row)]
             for n, row in zip(prediction.slice_numbers, prediction.slice_probabilities, strict=True)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [" ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]


def scan_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand folders into their ``.nii``/``.nii.gz`` files (sorted); files pass through.

    A folder holding no NIfTI file is taken as one DICOM series (see
    :func:`ichlib.io.dicom.series.load_dicom_series`); ``.series`` manifests pass through.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            niftis = sorted(q for q in p.iterdir() if q.name.endswith((".nii", ".nii.gz")))
            out += niftis if niftis else [p]
        else:
            out.append(p)
    return out
