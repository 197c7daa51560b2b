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
from ichlib.labels import LABELS, SUBTYPES
from ichlib.training.metrics import paired_auc_difference

BASELINE = "intensity rule"
POSITION = "position rule"
#: The one-feature rules every model is compared with: the name in metrics.json's
#: ``comparisons`` and the key of its metrics.
RULES = {BASELINE: "baseline", POSITION: "position_baseline"}


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
    """One row per run (from its ``metrics.json``), plus the intensity rule and the position
    rule on the same test patients, and each run's paired difference from both rules.

    Args:
        runs: ``{name: metrics}``; every run must have the same test split.
        baseline_from: The run whose rules give the rule rows (default: the first); a rule
            no run has is left out.

    Returns:
        Columns ``AUC any``, ``any 95% CI``, ``mean subtype AUC``, ``subtype 95% CI``,
        ``Δ subtype vs intensity`` and ``Δ subtype vs position`` (the paired bootstrap
        difference of mean subtype AUC with its interval, :func:`paired_auc_difference`),
        ``patient weighted log loss``, ``image weighted log loss`` (RSNA's, over every test
        image), ``n test`` and ``train seconds``; values rounded to 3 decimals.
    """
    if not runs:
        return pd.DataFrame()
    splits = {name: sorted(metrics["split"]["test"]) for name, metrics in runs.items()}
    if len({tuple(s) for s in splits.values()}) > 1:
        raise ValueError("the runs were tested on different patients; compare them on one split")
    rows = {name: {**_row(metrics["test"], metrics.get("training", {}).get("total_seconds")),
                   **_differences(metrics)}
            for name, metrics in runs.items()}
    source = runs[baseline_from or next(iter(runs))]
    for rule, key in RULES.items():
        if source.get(key):
            rows[rule] = {**_row(source[key]["test"], None), **{f"Δ subtype vs {r.split()[0]}": "-" for r in RULES}}
    table = pd.DataFrame(rows).T
    return table.astype(object).where(table.notna(), "-")  # a rule has no training time: "-", not None


def verdict_table(runs: Mapping[str, Mapping], any_auc: float = 0.90) -> pd.DataFrame:
    """The course's bar (:func:`meets_bar`) for each run, one short row each.

    Columns: ``AUC any``, ``AUC any ≥ <bar>`` (yes / no), ``vs intensity rule`` and ``vs
    position rule`` (the paired verdict on mean subtype AUC: ``beats``, ``no clear
    difference`` or ``rule is better``), and ``bar`` (``MET`` / ``NOT MET``).
    """
    rows = {}
    for name, metrics in runs.items():
        auc = metrics["test"]["patient"]["labels"]["any"]["auc"]
        row = {"AUC any": _round(auc), f"AUC any ≥ {any_auc:.2f}": "yes" if auc is not None and auc >= any_auc else "no"}
        for rule in RULES:
            ci = (((metrics.get("comparisons") or {}).get(rule) or {}).get("mean_subtype") or {}).get("ci")
            row[f"vs {rule}"] = ("n/a" if not ci else "beats" if ci[0] > 0 else "rule is better" if ci[1] < 0
                                 else "no clear difference")
        row["bar"] = "MET" if meets_bar(metrics, any_auc)[0] else "NOT MET"
        rows[name] = row
    return pd.DataFrame(rows).T


def _differences(metrics: Mapping) -> dict:
    """``Δ subtype vs <rule>`` cells: the paired difference and its interval, as text."""
    out = {}
    for rule in RULES:
        entry = (metrics.get("comparisons") or {}).get(rule, {}).get("mean_subtype")
        out[f"Δ subtype vs {rule.split()[0]}"] = _signed(entry)
    return out


def _signed(entry: Mapping | None) -> str:
    if not entry or entry.get("difference") is None:
        return "n/a"
    ci = entry.get("ci")
    return f"{entry['difference']:+.3f}" + (f" ({ci[0]:+.2f} to {ci[1]:+.2f})" if ci else "")


def beats_baseline(metrics: Mapping, key: str = "mean_subtype", rule: str = BASELINE) -> str:
    """One sentence: does the model beat ``rule`` on ``key`` (``"mean_subtype"`` or
    ``"any"``), judged by the paired bootstrap difference on the same test patients.

    "beats" needs the whole 95% interval of the difference above 0; "does NOT beat" is said
    when the interval includes 0 (no clear difference) or lies below it (the rule is better).
    """
    comparison = (metrics.get("comparisons") or {}).get(rule, {}).get(key)
    n = metrics["n_patients"]["test"]
    what = "mean subtype AUC" if key == "mean_subtype" else f"AUC of {key}"
    if not comparison or comparison.get("difference") is None:
        return f"{what}: no paired comparison with the {rule} on this test split ({n} patients), so no verdict."
    diff, ci = comparison["difference"], comparison.get("ci")
    if ci is None:
        return f"{what}: {diff:+.3f} against the {rule}, without an interval, so no verdict ({n} test patients)."
    if ci[0] > 0:
        verdict = "beats"
    elif ci[1] < 0:
        verdict = "does NOT beat (the rule is better than)"
    else:
        verdict = "does NOT clearly beat"
    return (f"{what}: the model {verdict} the {rule}: difference {diff:+.3f}, paired 95% interval "
            f"{ci[0]:+.3f} to {ci[1]:+.3f} ({n} test patients).")


def compare_runs(a: Mapping, b: Mapping, names: tuple[str, str] = ("A", "B"), n_boot: int = 1000,
                 seed: int = 0) -> str:
    """Does run ``a`` beat run ``b`` on the same test patients? The paired bootstrap
    difference of AUC ``any`` and of mean subtype AUC, as one line per quantity.

    Raises:
        ValueError: The runs were tested on different patients.
    """
    if sorted(a["test"]["probabilities"]) != sorted(b["test"]["probabilities"]):
        raise ValueError("the runs were tested on different patients; compare them on one split")
    ids = sorted(a["test"]["probabilities"])
    y = np.array([[a["test"]["labels"][pid][label] for label in LABELS] for pid in ids])
    p_a, p_b = ([[m["test"]["probabilities"][pid][label] for label in LABELS] for pid in ids] for m in (a, b))
    diff = paired_auc_difference(y, np.array(p_a), np.array(p_b), n_boot=n_boot, seed=seed)
    lines = []
    for key, what in (("any", "AUC any"), ("mean_subtype", "mean subtype AUC")):
        d, ci = diff[key]["difference"], diff[key]["ci"]
        if d is None or ci is None:
            lines.append(f"{what}: n/a on these {len(ids)} patients")
            continue
        verdict = (f"{names[0]} is better" if ci[0] > 0 else f"{names[1]} is better" if ci[1] < 0
                   else "no clear difference")
        lines.append(f"{what}: {names[0]} − {names[1]} = {d:+.3f} (paired 95% interval {ci[0]:+.3f} to "
                     f"{ci[1]:+.3f}): {verdict}")
    return "\n".join(lines)


def meets_bar(metrics: Mapping, any_auc: float = 0.90) -> tuple[bool, str]:
    """The course's bar for a model: its mean subtype AUC beats both one-feature rules (paired
    interval of the difference above 0) and its AUC of ``any`` is at least ``any_auc``.

    Returns:
        Whether it is met, and one line saying why.
    """
    auc = metrics["test"]["patient"]["labels"]["any"]["auc"]
    beaten = [rule for rule in RULES
              if ((((metrics.get("comparisons") or {}).get(rule) or {}).get("mean_subtype") or {}).get("ci")
                  or [0.0])[0] > 0]
    met = auc is not None and auc >= any_auc and len(beaten) == len(RULES)
    parts = [f"AUC any {'n/a' if auc is None else f'{auc:.3f}'} (bar {any_auc:.2f})"]
    parts += [f"{'beats' if rule in beaten else 'does not clearly beat'} the {rule}" for rule in RULES]
    return met, ("MET: " if met else "NOT MET: ") + "; ".join(parts)


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
