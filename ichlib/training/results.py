"""A run's results by attribute: typed views of ``metrics.json`` and of the reports in it.

``fit`` writes ``metrics.json`` as nested dicts (JSON that any tool, and older ichlib, reads);
:class:`RunMetrics` reads the same dict and names what a notebook or a script wants from it::

    run = ichlib.fit(config)
    run.scores.test.auc("any")             # was metrics["test"]["patient"]["labels"]["any"]["auc"]
    run.scores.test.mean_subtype_auc
    run.scores.test_probabilities          # DataFrame, one row per test patient
    run.scores.image_log_loss              # RSNA's image-level weighted log loss on test

:class:`Scores` is one report of :func:`~ichlib.training.metrics.score_predictions` (a split at
patient or slice level). Nothing here computes a metric: the views only read, and each keeps
the dict it came from as ``raw`` for what it does not name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ichlib.errors import ConfigError
from ichlib.labels import LABELS


@dataclass(frozen=True)
class LabelScore:
    """One label's AUC with its bootstrap interval (``None`` where a class is missing).

    Attributes:
        auc: ROC AUC, or None when the split has one class of the label.
        ci: ``(low, high)`` 95% bootstrap interval, or None.
        n_pos, n_neg: Positives and negatives.
        note: Why ``auc`` is None, else None.
    """

    auc: float | None
    ci: tuple[float, float] | None
    n_pos: int
    n_neg: int
    note: str | None = None


@dataclass(frozen=True)
class Scores:
    """One :func:`~ichlib.training.metrics.score_predictions` report, by attribute.

    Attributes:
        level: ``"patient"`` or ``"slice"``.
        n: Rows scored (patients, or slices).
        labels: :class:`LabelScore` per label, in the order of :data:`~ichlib.labels.LABELS`.
        mean_auc: Mean AUC over the labels that have one.
        mean_subtype_auc: Mean AUC over the five subtypes that have one.
        mean_subtype_auc_ci: Its bootstrap interval, or None.
        weighted_log_loss: The level's weighted log loss (``any`` weighted 2).
        raw: The report itself.
    """

    level: str
    n: int
    labels: dict[str, LabelScore]
    mean_auc: float | None
    mean_subtype_auc: float | None
    mean_subtype_auc_ci: tuple[float, float] | None
    weighted_log_loss: float | None
    raw: dict

    @classmethod
    def from_report(cls, report: dict) -> Scores:
        """The view of a report dict (as written in ``metrics.json``)."""
        try:
            level = report["level"]
            labels = {label: LabelScore(entry["auc"], _pair(entry.get("auc_ci")), int(entry["n_pos"]),
                                        int(entry["n_neg"]), entry.get("note"))
                      for label, entry in report["labels"].items()}
            return cls(level=level, n=int(report["n"]), labels=labels, mean_auc=report.get("mean_auc"),
                       mean_subtype_auc=report.get("mean_subtype_auc"),
                       mean_subtype_auc_ci=_pair(report.get("mean_subtype_auc_ci")),
                       weighted_log_loss=report.get(f"{level}_weighted_log_loss"), raw=report)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"not a score report (missing {exc}); expected the output of "
                              "score_predictions") from exc

    def auc(self, label: str) -> float | None:
        """The AUC of ``label`` (None where the split has one class of it)."""
        return self._label(label).auc

    def ci(self, label: str) -> tuple[float, float] | None:
        """The 95% bootstrap interval of ``label``'s AUC."""
        return self._label(label).ci

    def _label(self, label: str) -> LabelScore:
        if label not in self.labels:
            raise ConfigError(f"unknown label {label!r}; the labels are {', '.join(LABELS)}")
        return self.labels[label]


@dataclass(frozen=True)
class RunMetrics:
    """A run's ``metrics.json``, by attribute (:attr:`FitResult.scores <ichlib.training.fit.FitResult.scores>`).

    Attributes:
        data: ``"synthetic"`` or ``"real"``.
        note: What the numbers mean (synthetic data, or research code on real scans).
        split: ``{"train", "val", "test"}`` patient ids.
        thresholds: Per-label thresholds chosen on validation.
        val: Patient-level validation scores.
        test: Patient-level test scores.
        test_slices: Slice-level test scores (the slice head).
        test_probabilities: Patients x labels, the test patients' probabilities.
        image_log_loss: RSNA's image-level weighted log loss on the test slices.
        prior_log_loss: The same loss of the training prevalences (the prior's), or None.
        combines: Scan probabilities combined over samplings three ways (max, mean, one):
            AUC ``any`` and mean subtype AUC, one row each.
        comparisons: Paired differences from the rules, ``{"intensity rule", "position rule"}``.
        shortcut_audit: ``{"band", "rows"}``: the slice head, the intensity rule and the
            height rule on the test slices, at all heights and inside the blood band.
        training: What the training recorded (epochs, best epoch, seconds, stage 2...).
        raw: The whole dict.
    """

    data: str
    note: str
    split: dict[str, list[str]]
    thresholds: dict[str, float]
    val: Scores
    test: Scores
    test_slices: Scores
    test_probabilities: pd.DataFrame
    image_log_loss: float | None
    prior_log_loss: float | None
    combines: pd.DataFrame
    comparisons: dict
    shortcut_audit: dict
    training: dict
    raw: dict

    @classmethod
    def from_dict(cls, metrics: dict) -> RunMetrics:
        """The view of a ``metrics.json`` dict.

        Raises:
            ConfigError: If the dict is not a finished run's metrics (no test scores).
        """
        if "test" not in metrics or "patient" not in metrics.get("test", {}):
            raise ConfigError("these metrics have no test scores: not a finished run's metrics.json")
        test = metrics["test"]
        image = test.get("image") or {}
        probabilities = pd.DataFrame.from_dict(test.get("probabilities", {}), orient="index",
                                               columns=list(LABELS))
        return cls(data=metrics.get("data", "unknown"), note=metrics.get("note", ""),
                   split=metrics.get("split", {}), thresholds=metrics.get("thresholds", {}),
                   val=Scores.from_report(metrics["val"]["patient"]), test=Scores.from_report(test["patient"]),
                   test_slices=Scores.from_report(test["slice"]), test_probabilities=probabilities,
                   image_log_loss=image.get("image_weighted_log_loss"),
                   prior_log_loss=image.get("prevalence_prior"),
                   combines=pd.DataFrame(test.get("combines", {})).T,
                   comparisons=metrics.get("comparisons", {}),
                   shortcut_audit=metrics.get("shortcut_audit", {}), training=metrics.get("training", {}),
                   raw=metrics)

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> RunMetrics:
        """The view of ``run_dir/metrics.json``.

        Raises:
            ConfigError: If the file is missing or not a finished run's metrics.
        """
        path = Path(run_dir) / "metrics.json"
        if not path.is_file():
            raise ConfigError(f"{path}: no metrics.json (has the run finished?)")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, ConfigError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc


def _pair(values: list | tuple | None) -> tuple[float, float] | None:
    return None if values is None else (float(values[0]), float(values[1]))
