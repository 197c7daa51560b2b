"""Figures for training runs: learning curves, ROC curves and AUCs per label, confusion matrices."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from sklearn.metrics import roc_curve

from ichlib.labels import LABELS
from ichlib.viz.figures import SUBTYPE_COLORS


def plot_history(histories: Mapping[str, pd.DataFrame], note: str = "") -> plt.Figure:
    """Training and validation loss, and validation mean AUC, per epoch for one or more runs.

    Args:
        histories: ``{run name: history}`` with the columns written to ``history.csv``
            (``epoch``, ``train_loss``, ``val_loss``, ``val_mean_auc``).
        note: Text for the figure title (e.g. the synthetic-data note).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for (name, h), color in zip(histories.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        axes[0].plot(h["epoch"], h["train_loss"], "-", color=color, label=f"{name} train")
        axes[0].plot(h["epoch"], h["val_loss"], "--", color=color, label=f"{name} val")
        if "val_mean_auc" in h and h["val_mean_auc"].notna().any():
            axes[1].plot(h["epoch"], h["val_mean_auc"].astype(float), "-o", ms=3, color=color, label=name)
    axes[0].set(xlabel="epoch", ylabel="loss",
                title="loss optimised: (1-λ)·scan + λ·slice BCE; two-stage stage 1: slice BCE")
    axes[1].set(xlabel="epoch", ylabel="AUC", title="validation mean AUC (patient level)", ylim=(0, 1))
    axes[1].axhline(0.5, color="grey", lw=0.8, ls=":")
    if not axes[1].lines[1:]:  # only the chance line: no run has a patient-level validation AUC
        axes[1].text(0.5, 0.6, "no patient-level validation AUC\n(two-stage stage 1 trains the slice head only)",
                     ha="center", va="center", fontsize=8, transform=axes[1].transAxes)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if note:
        fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    return fig


def plot_roc_curves(y_true: np.ndarray, scores: Mapping[str, np.ndarray], note: str = "") -> plt.Figure:
    """One ROC panel per label, one curve per model, on the same patients.

    Args:
        y_true: ``[N, 6]`` labels, columns as LABELS.
        scores: ``{model name: [N, 6] scores}``.
        note: Figure title.
    """
    columns = 3
    rows = -(-len(LABELS) // columns)
    fig, grid = plt.subplots(rows, columns, figsize=(3.0 * columns + 2.4, 3.0 * rows), sharex=True,
                             sharey=True, layout="constrained", squeeze=False)
    axes = grid.ravel()
    for j, (ax, label) in enumerate(zip(axes, LABELS)):
        y = np.asarray(y_true)[:, j] > 0.5
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        if y.all() or not y.any():
            ax.text(0.5, 0.5, "one class only\nin this split", ha="center", va="center", fontsize=8)
        else:
            for name, s in scores.items():
                fpr, tpr, _ = roc_curve(y, np.asarray(s)[:, j])
                ax.plot(fpr, tpr, lw=1.5, label=name)
        ax.set_title(f"{label} ({int(y.sum())}+/{int((~y).sum())}-)", fontsize=9,
                     color=SUBTYPE_COLORS.get(label, "black") if label != "any" else "black")
        ax.set_aspect("equal")
    for ax in axes[len(LABELS):]:
        ax.set_axis_off()
    for ax in grid[-1]:
        ax.set_xlabel("1 - specificity")
    for ax in grid[:, 0]:
        ax.set_ylabel("sensitivity")
    handles, names = next(((h, n) for h, n in (ax.get_legend_handles_labels() for ax in axes) if h), ([], []))
    if handles:  # beside the panels, never over a curve or an axis label
        fig.legend(handles, names, loc="outside right center", fontsize=8)
    if note:
        fig.suptitle(note, fontsize=9)
    return fig


def confusion_counts(y_true: np.ndarray, y_prob: np.ndarray, thresholds: Mapping[str, float]) -> pd.DataFrame:
    """TP, FP, FN, TN per label at the given thresholds (a prediction is positive at >= t)."""
    rows = []
    for j, label in enumerate(LABELS):
        y = np.asarray(y_true)[:, j] > 0.5
        pred = np.asarray(y_prob)[:, j] >= float(thresholds[label])
        rows.append({"label": label, "TP": int((y & pred).sum()), "FP": int((~y & pred).sum()),
                     "FN": int((y & ~pred).sum()), "TN": int((~y & ~pred).sum())})
    return pd.DataFrame(rows).set_index("label")


def plot_confusion_matrices(counts: pd.DataFrame, note: str = "") -> plt.Figure:
    """2x2 confusion matrices, one per label, from :func:`confusion_counts`, three to a row."""
    columns = min(3, max(1, len(counts)))
    rows = -(-len(counts) // columns)
    fig, grid = plt.subplots(rows, columns, figsize=(2.9 * columns, 2.7 * rows), layout="constrained",
                             squeeze=False)
    axes = grid.ravel()
    for ax in axes[len(counts):]:
        ax.set_axis_off()
    for ax, (label, row) in zip(axes, counts.iterrows()):
        m = np.array([[row["TN"], row["FP"]], [row["FN"], row["TP"]]])
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(1, m.max()))
        for (i, k), v in np.ndenumerate(m):
            ax.text(k, i, int(v), ha="center", va="center", fontsize=11,
                    color="white" if v > m.max() / 2 else "black")
        ax.set_xticks([0, 1], ["pred -", "pred +"], fontsize=10)
        ax.set_yticks([0, 1], ["true -", "true +"], fontsize=10)
        ax.set_title(label, fontsize=10)
    if note:
        fig.suptitle(note, fontsize=9)
    return fig


def plot_label_aucs(table: pd.DataFrame, note: str = "") -> plt.Figure:
    """Test AUC per label with its 95% interval, one marker per model, side by side.

    Args:
        table: :func:`~ichlib.training.metrics.results_table` rows (``model, label, auc,
            auc_ci_low, auc_ci_high``) of several models on the same patients. A label
            without an AUC (too few positives) is drawn as "n/a".
        note: Figure title (e.g. the synthetic-data note).
    """
    models = list(dict.fromkeys(table["model"]))
    colors = dict(zip(models, sns.color_palette("colorblind", len(models)), strict=True))
    fig, ax = plt.subplots(figsize=(10, 3.6), layout="constrained")
    width = 0.7 / max(len(models), 1)
    for m, model in enumerate(models):
        rows = table[table["model"] == model].set_index("label").reindex(list(LABELS))
        x = np.arange(len(LABELS)) + (m - (len(models) - 1) / 2) * width
        auc = rows["auc"].to_numpy(dtype=float)
        low = np.nan_to_num(auc - rows["auc_ci_low"].to_numpy(dtype=float))
        high = np.nan_to_num(rows["auc_ci_high"].to_numpy(dtype=float) - auc)
        ax.errorbar(x, auc, yerr=[low, high], fmt="o", ms=5, capsize=2, color=colors[model], label=model)
        for xi in x[np.isnan(auc)]:
            ax.text(xi, 0.52, "n/a", rotation=90, ha="center", fontsize=9, color=colors[model])
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(np.arange(len(LABELS)), LABELS, fontsize=9)
    ax.set(ylabel="test AUC (95% CI)", ylim=(0.0, 1.02), title="AUC per label on the test patients")
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the data
    sns.despine(ax=ax)
    if note:
        fig.suptitle(note, fontsize=9)
    return fig


def plot_shortcut_audit(audits: Mapping[str, list[dict]], note: str = "") -> plt.Figure:
    """Slice AUC of ``any`` at all heights and inside the blood band, per model and rule.

    Args:
        audits: ``{run name: rows}``, each the ``rows`` of a run's ``shortcut_audit``
            (:func:`ichlib.training.shortcuts.band_audit`). The rules (intensity, height)
            are taken from the first run; each run adds its slice head.
        note: Figure title (e.g. the synthetic-data note).

    A bar that falls from the left panel to the right one was scoring where the slice is.
    """
    first = next(iter(audits.values()))
    rows = [r for r in first if r["model"] != "slice head"]
    rows += [{**r, "model": f"{name}: slice head"} for name, run in audits.items() for r in run
             if r["model"] == "slice head"]
    table = pd.DataFrame(rows)
    names = list(dict.fromkeys(table["model"]))
    colors = dict(zip(names, sns.color_palette("colorblind", len(names)), strict=True))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for ax, where in zip(axes, ("all heights", "blood band"), strict=True):
        part = table[table["where"] == where].set_index("model").reindex(names)
        auc = part["auc_any"].to_numpy(dtype=float)
        ci = np.array([c if isinstance(c, (list, tuple)) else (np.nan, np.nan) for c in part["auc_any_ci"]])
        y = np.arange(len(names))[::-1]
        ax.barh(y, auc, color=[colors[n] for n in names], height=0.6)
        ax.errorbar(auc, y, xerr=[np.nan_to_num(auc - ci[:, 0]), np.nan_to_num(ci[:, 1] - auc)],
                    fmt="none", ecolor="black", capsize=2, lw=0.8)
        for yi, value in zip(y, auc, strict=True):
            ax.text(0.02, yi, f"{value:.2f}", va="center", fontsize=8, color="white", weight="bold")
        ax.axvline(0.5, color="grey", lw=0.8, ls=":")
        n = int(part["n_slices"].iloc[0])
        ax.set(xlim=(0, 1), xlabel="slice AUC of 'any' (95% CI)", title=f"{where} ({n} slices)")
        ax.set_yticks(y, names, fontsize=8)
        sns.despine(ax=ax)
    if note:
        fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    return fig
