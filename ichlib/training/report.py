"""What a run's test split says: several trainings and the intensity baseline side by side (every
value with its interval), and each test patient's outcome at the validation thresholds."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ichlib.errors import DataError
from ichlib.labels import SUBTYPES

BASELINE = "intensity baseline"


def read_metrics(run_dir: str | os.PathLike) -> dict:
    """A finished run's ``metrics.json`` (what :func:`~ichlib.training.fit.fit` wrote there).

    Raises:
        DataError: If the file is missing (the run did not finish) or is not JSON.
    """
    path = Path(run_dir) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "no metrics: the run did not finish; train it first") from None
    except (OSError, ValueError) as exc:
        raise DataError(path, f"unreadable metrics ({exc})") from None


def comparison_table(runs: Mapping[str, Mapping], baseline_from: str | None = None) -> pd.DataFrame:
    """One row per run (from its ``metrics.json``), plus the intensity baseline on the same
    test patients.

    Args:
        runs: ``{name: metrics}``; every run must have the same test split.
        baseline_from: The run whose ``baseline`` entry gives the baseline row (default: the
            first); None rows are skipped when no run has one.

    Returns:
        Columns ``AUC any``, ``any 95% CI``, ``mean subtype AUC``, ``subtype 95% CI``,
        ``patient weighted log loss``, ``image weighted log loss`` (RSNA's, over every test
        image), ``n test`` and ``train seconds``; values rounded to 3 decimals.
    """
    if not runs:
        return pd.DataFrame()
    splits = {name: sorted(metrics["split"]["test"]) for name, metrics in runs.items()}
    if len({tuple(s) for s in splits.values()}) > 1:
        raise ValueError("the runs were tested on different patients; compare them on one split")
    rows = {name: _row(metrics["test"], metrics.get("training", {}).get("total_seconds"))
            for name, metrics in runs.items()}
    source = runs[baseline_from or next(iter(runs))]
    if source.get("baseline"):
        rows[BASELINE] = _row(source["baseline"]["test"], None)
    return pd.DataFrame(rows).T


def beats_baseline(metrics: Mapping, key: str = "mean_subtype_auc") -> str:
    """One sentence: does the model beat the intensity baseline on ``key``, on which patients."""
    model = metrics["test"]["patient"].get(key)
    base = metrics["baseline"]["test"]["patient"].get(key)
    n = metrics["n_patients"]["test"]
    if model is None or base is None:
        return f"{key} is n/a on this test split ({n} patients), so there is no verdict."
    verdict = "beats" if model > base else "does NOT beat"
    return (f"On the {key.replace('_', ' ')} the model {verdict} the intensity baseline: "
            f"{model:.3f} against {base:.3f} ({n} test patients; read the intervals).")


def patient_outcomes(metrics: Mapping, truth: pd.DataFrame, label: str = "any") -> pd.DataFrame:
    """Each test patient's decision for ``label`` at the threshold chosen on validation.

    Args:
        metrics: A run's ``metrics.json`` (its test probabilities and thresholds).
        truth: Patient labels indexed by patient id (``CtIchData.patients``).
        label: The label decided.

    Returns:
        One row per test patient: ``p`` (the probability of ``label``), ``predicted``,
        ``truth``, ``outcome`` (``TP``, ``FP``, ``FN`` or ``TN``) and ``top_subtype`` (the most
        probable subtype, what a positive decision would name).

    Raises:
        KeyError: If a test patient is missing from ``truth``.
    """
    probs = pd.DataFrame(metrics["test"]["probabilities"]).T
    threshold = float(metrics["thresholds"][label])
    table = pd.DataFrame({"p": probs[label].astype(float)})
    table["predicted"] = table["p"] >= threshold
    table["truth"] = truth.loc[table.index, label].astype(bool).to_numpy()
    table["outcome"] = np.select([table.predicted & table.truth, table.predicted & ~table.truth,
                                  ~table.predicted & table.truth], ["TP", "FP", "FN"], "TN")
    table["top_subtype"] = probs[list(SUBTYPES)].astype(float).idxmax(axis=1)
    table.index.name = "patient_id"
    return table


def _row(test: Mapping, seconds: float | None) -> dict:
    patient = test["patient"]
    any_entry = patient["labels"]["any"]
    image = (test.get("image") or {}).get("image_weighted_log_loss")
    return {"AUC any": _round(any_entry["auc"]), "any 95% CI": _interval(any_entry["auc_ci"]),
            "mean subtype AUC": _round(patient["mean_subtype_auc"]),
            "subtype 95% CI": _interval(patient["mean_subtype_auc_ci"]),
            "patient weighted log loss": _round(patient.get("patient_weighted_log_loss")),
            "image weighted log loss": _round(image), "n test": patient["n"],
            "train seconds": None if seconds is None else round(float(seconds))}


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def _interval(ci) -> str:
    return "n/a" if not ci else f"{ci[0]:.2f}-{ci[1]:.2f}"
