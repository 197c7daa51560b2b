"""RSNA 2019 submissions: the competition's ``ID,Label`` file from folders of DICOM series.

A submission has one row per image and label, ``ID_<SOPInstanceUID>_<label>,<probability>``,
with the six labels in RSNA's names (:data:`SUBMISSION_LABELS`), for every ``*.dcm`` image
of every series given. Rows are sorted by image id, then in RSNA's label order, and the
probabilities are written with :data:`PROBABILITY_DIGITS` significant digits, so the same
inputs and model give the same bytes; the file is written atomically.

Per-image probabilities come from one of two per-slice outputs (:data:`IMAGE_SOURCES`):

* ``"slice"`` (:data:`DEFAULT_IMAGE_SOURCE`): the slice head, the CNN's auxiliary output,
  trained on each slice's own labels.
* ``"sequence"``: the sequence model's per-slice patient-level outputs, as the RSNA sequence
  solutions submitted: the scan head applied to the BiLSTM's output at each slice, before
  the pooling over slices. A slice that several samplings hold
  (:func:`~ichlib.preprocess.sampling.covering_indices`) gets the mean of its logits. Only
  models with ``"max"`` or ``"mean"`` pooling have them.

``ichlib evaluate`` (:mod:`ichlib.scoring`) scores both on a labelled folder. On held-out
synthetic series the slice head scored better for end-to-end models, and the sequence outputs
for a two-stage model, whose stage 2 learns from the labels of the slices each sequence holds
(docs/results.md gives the numbers).

An image that cannot be predicted (an unreadable file, a series failing a check, a scan the
model fails on) still gets its six rows, filled with the *prior*, and is reported as an
error. The prior is given (e.g. the image prevalence of ``stage_2_train.csv``,
:func:`ichlib.scoring.image_prior`), or else the mean probability the model gave to the
images it did predict in the same call.

This module does not import the training stack (start-up time of ``ichlib predict``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ichlib.errors import ConfigError, DataError, IchlibError
from ichlib.io.atomic import atomic_open
from ichlib.io.dicom.series import (
    MANIFEST_SUFFIX,
    load_dicom_series,
    read_series_headers,
    read_series_manifest,
)
from ichlib.io.files import MAX_TABLE_BYTES, regular_file
from ichlib.io.rsna import RSNA_LABEL_ORDER, find_rsna_image_dir, read_rsna_images, rsna_image_id
from ichlib.labels import LABELS
from ichlib.predict import PredictionError, Predictor, ScanInput, ScanPrediction
from ichlib.preprocess.sampling import covering_indices

#: The labels of a submission, in the order of an image's six rows (RSNA's names).
SUBMISSION_LABELS: tuple[str, ...] = RSNA_LABEL_ORDER
#: Where per-image probabilities come from (see the module docstring).
IMAGE_SOURCES: tuple[str, ...] = ("slice", "sequence")
#: The source ``ichlib predict --rsna-csv`` uses unless told: the one that scored better.
DEFAULT_IMAGE_SOURCE = "slice"
#: Significant digits of each probability in the file.
PROBABILITY_DIGITS = 8
#: Poolings whose scan head reads every slice's BiLSTM output (so per-slice outputs exist).
_PER_SLICE_POOLINGS = ("max", "mean")


@dataclass(frozen=True)
class SliceOutputs:
    """Both per-slice outputs of one scan.

    Attributes:
        prediction: The scan's :class:`~ichlib.predict.ScanPrediction` (patient level and
            slice head).
        sequence: ``[N, 6]`` per-slice patient-level probabilities of the sequence model,
            columns as LABELS; None when the model's pooling has none.
    """

    prediction: ScanPrediction
    sequence: np.ndarray | None

    def probabilities(self, source: str) -> np.ndarray:
        """``[N, 6]`` per-image probabilities from ``source`` (one of :data:`IMAGE_SOURCES`)."""
        check_image_source(source)
        if source == "slice":
            return self.prediction.slice_probabilities
        if self.sequence is None:
            raise ConfigError("this model has no per-slice sequence outputs (pooling 'attention' "
                              "or 'last'); use the slice head")
        return self.sequence


def check_image_source(source: str, model: torch.nn.Module | None = None) -> None:
    """Refuse an unknown source, or ``"sequence"`` for a model without per-slice outputs.

    Raises:
        ConfigError: Saying what to choose instead.
    """
    if source not in IMAGE_SOURCES:
        raise ConfigError(f"unknown image source {source!r}; choose one of {', '.join(IMAGE_SOURCES)}")
    if source == "sequence" and model is not None and not has_sequence_outputs(model):
        raise ConfigError(f"the model pools its slices with {getattr(model, 'pooling', '?')!r}, so it "
                          "has no per-slice sequence outputs; use the slice head (--image-source slice)")


def has_sequence_outputs(model: torch.nn.Module) -> bool:
    """True when the scan head reads each slice's BiLSTM output (max or mean pooling)."""
    return getattr(model, "pooling", None) in _PER_SLICE_POOLINGS


def predict_slices(predictor: Predictor, scan: ScanInput) -> SliceOutputs:
    """Predict one scan and keep the sequence model's per-slice outputs as well.

    The scan goes through :class:`~ichlib.predict.Predictor` unchanged (every slice, the
    checkpoint's preprocessing); a forward hook keeps the sequences of embeddings the
    sequence half reads (one per sampling), and
    :meth:`~ichlib.model.CNNBiLSTM.sequence_slice_logits` turns them into per-slice logits,
    the members' probabilities averaged where the model has several (see the module docstring).

    Raises:
        DataError: If the scan cannot be read.
        IchlibError: If the model's output is not finite.
    """
    model = predictor.model
    captured: list[torch.Tensor] = []
    handle = None
    if has_sequence_outputs(model):
        handle = model.lstm_norm.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    try:
        prediction = predictor(scan)
    finally:
        if handle is not None:
            handle.remove()
    if not captured:
        return SliceOutputs(prediction, None)
    n = len(prediction.slice_numbers)
    samplings = covering_indices(n, predictor.preprocess.seq_len)
    if len(captured) != 1 or tuple(captured[0].shape[:2]) != samplings.shape:
        raise IchlibError(f"{prediction.path or '<array>'}: the BiLSTM read {len(captured)} batch(es) "
                          f"of shape {[tuple(c.shape) for c in captured]}, not the {samplings.shape} "
                          "samplings expected; cannot map its outputs to slices")
    with torch.inference_mode():
        logits = model.sequence_slice_logits(captured[0]).float().cpu().numpy()
    return SliceOutputs(prediction, per_slice_probabilities(logits, samplings, n))


def per_slice_probabilities(logits: np.ndarray, samplings: np.ndarray, n_slices: int) -> np.ndarray:
    """Per-slice probabilities from per-position logits: each slice's mean logit, then a sigmoid.

    Args:
        logits: ``[K, S, L]`` logits at each position of each sampling.
        samplings: ``[K, S]`` slice index of each position; every slice in ``[0, n_slices)``
            must appear at least once.
        n_slices: Number of slices.

    Returns:
        ``[n_slices, L]`` float64 probabilities.
    """
    logits = np.asarray(logits, dtype=np.float64)
    index = np.asarray(samplings).ravel()
    counts = np.bincount(index, minlength=n_slices)
    if counts.shape[0] != n_slices or (counts == 0).any():
        raise ConfigError(f"the samplings do not cover each of the {n_slices} slices")
    sums = np.zeros((n_slices, logits.shape[-1]))
    np.add.at(sums, index, logits.reshape(-1, logits.shape[-1]))
    return 0.5 * (1.0 + np.tanh(0.5 * sums / counts[:, None]))  # the sigmoid, without overflow


# --- the series of a submission --------------------------------------------------------------

@dataclass(frozen=True)
class RsnaSeries:
    """One series to predict: its image ids and files, both in volume order."""

    series_uid: str
    image_ids: tuple[str, ...]
    files: tuple[Path, ...]


@dataclass
class SeriesCollection:
    """What :func:`collect_rsna_series` found.

    Attributes:
        series: The series to predict, sorted by UID (each image in one series only).
        unusable: Per image id that cannot be predicted, why (the file or series named).
        errors: Inputs that yielded no image at all (missing path, a NIfTI file, ...).
    """

    series: list[RsnaSeries] = field(default_factory=list)
    unusable: dict[str, str] = field(default_factory=dict)
    errors: list[PredictionError] = field(default_factory=list)


def collect_rsna_series(inputs: Iterable[str | os.PathLike],
                        cache_dir: str | os.PathLike | None = None) -> SeriesCollection:
    """Group every image of the inputs into series, in volume order.

    Args:
        inputs: RSNA folders (``ROOT`` holding ``stage_2_test/`` or ``stage_2_train/``), flat
            folders of ``*.dcm`` files (one or many series), or ``.series`` manifests.
        cache_dir: Header cache (see :func:`ichlib.io.rsna.read_rsna_images`).

    Returns:
        The series, the images that cannot be predicted, and the inputs that gave nothing.
        An image id found in two inputs is predicted from the first; a series whose images
        share an id is not predicted (its images get the prior).
    """
    found = SeriesCollection()
    series: dict[str, RsnaSeries] = {}
    owner: dict[str, Path] = {}  # image id -> the file it was first read from
    for item in inputs:
        path = Path(item)
        try:
            new, unusable = _read_input(path, cache_dir)
        except DataError as exc:
            found.errors.append(PredictionError(str(path), str(exc)))
            continue
        for image_id, why in unusable.items():
            found.unusable.setdefault(image_id, why)
        for s in new:
            if len(set(s.image_ids)) != len(s.image_ids):
                why = (f"{s.files[0].parent} (series {s.series_uid}): an image id (SOPInstanceUID) repeats "
                       "within the series, so its rows cannot be told apart")
                found.unusable.update(dict.fromkeys(s.image_ids, why))
                continue
            clash = next((i for i in s.image_ids if i in owner), None)
            if clash is None and s.series_uid not in series:
                series[s.series_uid] = s
                owner.update(zip(s.image_ids, s.files, strict=True))
                continue
            what = f"image {clash}" if clash else f"series {s.series_uid}"
            first = owner[clash] if clash else series[s.series_uid].files[0]
            why = f"{s.files[0]}: {what} was already read from {first}; this copy is not predicted"
            lost = [i for i in s.image_ids if i not in owner]
            if not lost:  # a second copy of images already read: nothing is missing
                found.errors.append(PredictionError(str(s.files[0]), why))
            for image_id in lost:
                found.unusable.setdefault(image_id, why)
    found.unusable = {i: why for i, why in found.unusable.items() if i not in owner}
    found.series = [series[uid] for uid in sorted(series)]
    return found


def _read_input(path: Path, cache_dir: str | os.PathLike | None) -> tuple[list[RsnaSeries], dict[str, str]]:
    """The series of one input and its unusable images (DataError if it yields nothing)."""
    if path.suffix == MANIFEST_SUFFIX:
        files = read_series_manifest(path)
        try:
            layout = read_series_headers(path)
        except DataError as exc:
            return [], {f.stem: str(exc) for f in files}
        ids = tuple(rsna_image_id(h) for h in layout.headers)
        return [RsnaSeries(layout.headers[0].series_uid, ids, tuple(h.path for h in layout.headers))], {}
    if not path.is_dir():
        what = "not found" if not os.path.lexists(path) else "not an RSNA folder, a folder of *.dcm files or a .series manifest"
        raise DataError(path, what)
    images = read_rsna_images(find_rsna_image_dir(path), cache_dir=cache_dir)
    series = [RsnaSeries(uid, tuple(rsna_image_id(h) for h in layout.headers),
                         tuple(h.path for h in layout.headers)) for uid, layout in images.series.items()]
    return series, {i: str(problem) for i, problem in images.unusable.items()}


# --- predicting and writing ------------------------------------------------------------------

@dataclass
class RsnaPredictions:
    """Per-image probabilities for a submission.

    Attributes:
        probabilities: Per image id, ``[6]`` probabilities (columns as LABELS): every image
            found, predicted or filled with the prior.
        series: Per series UID, its image ids in volume order (the predicted series).
        fallback: Per image id that got the prior, why.
        errors: One per input, series or file that could not be predicted.
        prior: ``[6]`` the prior (columns as LABELS); None when no image needed it and none
            was given.
        prior_source: Where the prior came from, in words.
        image_source: ``"slice"`` or ``"sequence"``.
        trained_on: ``"synthetic"`` or ``"real"``.
    """

    probabilities: dict[str, np.ndarray]
    series: dict[str, tuple[str, ...]]
    fallback: dict[str, str]
    errors: list[PredictionError]
    prior: np.ndarray | None
    prior_source: str
    image_source: str
    trained_on: str

    @property
    def n_rows(self) -> int:
        """Rows of the submission: six per image."""
        return len(SUBMISSION_LABELS) * len(self.probabilities)


def predict_rsna(predictor: Predictor, inputs: Iterable[str | os.PathLike],
                 image_source: str = DEFAULT_IMAGE_SOURCE, prior: Sequence[float] | None = None,
                 prior_source: str = "given", cache_dir: str | os.PathLike | None = None) -> RsnaPredictions:
    """Predict every image of RSNA folders or series; a bad series gets the prior and an error.

    Args:
        predictor: A loaded checkpoint.
        inputs: See :func:`collect_rsna_series`.
        image_source: ``"slice"`` or ``"sequence"`` (see the module docstring).
        prior: ``[6]`` probabilities (columns as LABELS) for images that cannot be predicted;
            None: the mean probability over the images predicted here.
        prior_source: What ``prior`` is, in words (reported).
        cache_dir: Header cache.

    Raises:
        ConfigError: On a bad ``image_source`` or ``prior``.
        IchlibError: If some image needs the prior, none was given, and no image could be
            predicted to make one.
    """
    check_image_source(image_source, predictor.model)
    given = None if prior is None else checked_prior(prior)
    found = collect_rsna_series(inputs, cache_dir)
    probabilities: dict[str, np.ndarray] = {}
    fallback, errors = dict(found.unusable), list(found.errors)
    errors += _unusable_errors(found.unusable)
    series: dict[str, tuple[str, ...]] = {}
    for s in found.series:
        try:
            probs = _predict_series(predictor, s, image_source)
        except Exception as exc:  # one series' failure must not stop the others
            text = str(exc) if isinstance(exc, IchlibError) else f"{type(exc).__name__}: {exc}"
            message = f"series {s.series_uid} ({s.files[0].parent}): {' '.join(text.split())}"
            errors.append(PredictionError(s.series_uid, message))
            fallback.update(dict.fromkeys(s.image_ids, message))
            continue
        probabilities.update(zip(s.image_ids, probs, strict=True))
        series[s.series_uid] = s.image_ids
    prior_vector, described = _resolve_prior(given, prior_source, probabilities, fallback, errors)
    probabilities.update({i: prior_vector for i in fallback})
    return RsnaPredictions(probabilities, series, fallback, errors, prior_vector, described,
                           image_source, predictor.trained_on)


def _unusable_errors(unusable: Mapping[str, str]) -> list[PredictionError]:
    """One error per distinct problem (a failing series is one problem for all its images)."""
    by_problem: dict[str, list[str]] = {}
    for image_id, why in unusable.items():
        by_problem.setdefault(why, []).append(image_id)
    return [PredictionError(ids[0] if len(ids) == 1 else f"{len(ids)} images",
                            f"{why} ({len(ids)} image(s) filled with the prior, e.g. {ids[0]})")
            for why, ids in by_problem.items()]


def _predict_series(predictor: Predictor, series: RsnaSeries, image_source: str) -> np.ndarray:
    """``[N, 6]`` per-image probabilities of one series, in its image order."""
    volume = load_dicom_series(list(series.files))
    probs = predict_slices(predictor, volume).probabilities(image_source)
    if probs.shape != (len(series.image_ids), len(LABELS)):
        raise IchlibError(f"{probs.shape[0]} slices predicted for {len(series.image_ids)} images")
    return probs


def _resolve_prior(given: np.ndarray | None, source: str, probabilities: Mapping[str, np.ndarray],
                   fallback: Mapping[str, str], errors: list[PredictionError]) -> tuple[np.ndarray | None, str]:
    """The prior to fill in, and where it came from."""
    if given is not None:
        return given, source
    if probabilities:
        mean = np.mean(np.stack(list(probabilities.values())), axis=0)
        return mean, f"the model's mean probability over the {len(probabilities)} images it predicted"
    if not fallback:
        return None, "not needed"
    first = "; ".join(e.error for e in errors[:3])
    raise IchlibError(f"no image could be predicted ({len(errors)} error(s): {first}) and no prior was "
                      "given to fill the rows with; nothing was written")


def checked_prior(prior: Sequence[float]) -> np.ndarray:
    """``prior`` as ``[6]`` float64 after checking it (six finite values in [0, 1]).

    Raises:
        ConfigError: Otherwise.
    """
    values = np.asarray(prior, dtype=np.float64).ravel()
    if values.shape != (len(LABELS),) or not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise ConfigError(f"a prior is {len(LABELS)} probabilities in [0, 1] ({', '.join(LABELS)}), "
                          f"got {list(np.asarray(prior).ravel())}")
    return values


def submission_id(image_id: str, label: str) -> str:
    """The row id of an image and label: ``ID_<SOPInstanceUID>_<label>`` (RSNA's image ids
    already start with ``ID_``; others get it)."""
    base = image_id if image_id.startswith("ID_") else f"ID_{image_id}"
    return f"{base}_{label}"


def submission_lines(probabilities: Mapping[str, Sequence[float]]) -> list[str]:
    """The file's lines: the header, then six rows per image, sorted by image id.

    Args:
        probabilities: Per image id, six probabilities with columns as LABELS.
    """
    columns = [LABELS.index(label) for label in SUBMISSION_LABELS]
    lines = ["ID,Label"]
    for image_id in sorted(probabilities):
        row = np.asarray(probabilities[image_id], dtype=np.float64)
        lines += [f"{submission_id(image_id, SUBMISSION_LABELS[k])},{row[j]:.{PROBABILITY_DIGITS}g}"
                  for k, j in enumerate(columns)]
    return lines


def write_submission(path: str | os.PathLike, probabilities: Mapping[str, Sequence[float]]) -> int:
    """Write a submission atomically (see :func:`submission_lines`); returns its rows.

    Raises:
        ConfigError: If an image has not six finite probabilities in [0, 1].
        WriteError: If the file cannot be written (nothing is left half-written).
    """
    for image_id, row in probabilities.items():
        try:
            checked_prior(row)
        except ConfigError:
            raise ConfigError(f"image {image_id}: expected six probabilities in [0, 1], got "
                              f"{list(np.asarray(row).ravel())}") from None
    lines = submission_lines(probabilities)
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("\n".join(lines) + "\n")
    return len(lines) - 1


def read_submission(path: str | os.PathLike) -> pd.DataFrame:
    """Read a submission into one row per image: index ``image_id``, columns as LABELS.

    Raises:
        DataError: Naming the file and the first bad row: no ``ID``/``Label`` column, an ID
            that is not ``<image>_<label>`` with one of :data:`SUBMISSION_LABELS`, a value
            that is not a probability in [0, 1], an ID twice, or an image without its six rows.
    """
    path = Path(path)
    regular_file(path, "submission CSV", MAX_TABLE_BYTES)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not a readable submission CSV ({' '.join(str(exc).split())})") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    if [c for c in ("ID", "Label") if c not in raw.columns]:
        raise DataError(path, f"expected the columns ID,Label; found {','.join(raw.columns) or 'none'}")
    ids = raw["ID"].str.strip()
    parts = ids.str.rpartition("_")
    _refuse(path, (~parts[2].isin(SUBMISSION_LABELS)) | (parts[0] == ""), ids,
            f"is not <image>_<label> with a label in {', '.join(SUBMISSION_LABELS)}")
    values = pd.to_numeric(raw["Label"].str.strip(), errors="coerce")
    _refuse(path, ~values.between(0.0, 1.0), raw["Label"], "is not a probability in [0, 1]")
    _refuse(path, ids.duplicated(), ids, "appears twice")
    table = pd.DataFrame({"image_id": parts[0], "label": parts[2], "p": values.astype(np.float64)})
    wide = table.pivot(index="image_id", columns="label", values="p")
    wide = wide.reindex(columns=list(LABELS))
    incomplete = wide.isna().any(axis=1)
    if incomplete.any():
        first = wide.index[incomplete][0]
        absent = [lab for lab in LABELS if pd.isna(wide.at[first, lab])]
        raise DataError(path, f"{int(incomplete.sum())} image(s) lack some of their six rows (e.g. "
                              f"{first}: no {', '.join(absent)})")
    wide.columns.name = None
    return wide.sort_index()


def _refuse(path: Path, bad: pd.Series, shown: pd.Series, problem: str) -> None:
    """DataError naming the first bad row (file line numbers, header = line 1)."""
    if bad.any():
        at = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(path, f"{int(bad.sum())} row(s) whose value {problem}; first at line {at + 2}: "
                              f"{shown.iloc[at]!r}")
