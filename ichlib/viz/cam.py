"""Figures for Grad-CAM results (matplotlib; they need no display and work under ``Agg``).

Every function builds its own figure (never calls ``plt.show``), returns it, and saves
it as PNG when ``path`` is given; close it with ``plt.close(fig)`` in loops. Maps are drawn with the same colour
scale (0..1) everywhere, and with opacity growing with the map value, so a slice whose map
is faint after scan-wide normalisation *looks* faint.

Slices are named by CT-ICH's 1-based ``SliceNumber`` (``slice_indices + 1``).
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ichlib.explain.cam import ScanCAM
from ichlib.explain.report import ScanExplanation
from ichlib.io.atomic import atomic_path
from ichlib.labels import label_index

CMAP = "turbo"
MASK_COLOR = "lime"
LABEL_SHADE = "tab:red"


def plot_cam_slice(image: np.ndarray, cam: np.ndarray, mask: np.ndarray | None = None, *,
                   title: str | None = None, path: str | os.PathLike | None = None) -> Figure:
    """One slice three ways: the windowed slice, the map over it, and the mask outline.

    The third panel shows the slice with the hemorrhage mask outlined and the map's
    maximum marked with a cross (what the pointing game scores).

    Args:
        image: Windowed slice ``[H, W]`` in [0, 1] (one channel of the model input).
        cam: Map ``[H, W]`` in [0, 1].
        mask: Optional boolean mask ``[H, W]``.
        title: Figure title.
        path: Save the figure here as PNG.
    """
    image, cam = _as_2d(image, "image"), _as_2d(cam, "cam")
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.9), layout="constrained")
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("windowed slice")
    _overlay(axes[1], image, cam)
    axes[1].set_title("Grad-CAM")
    axes[2].imshow(image, cmap="gray", vmin=0, vmax=1)
    if mask is not None and np.any(mask):
        axes[2].contour(np.asarray(mask, dtype=float), levels=[0.5], colors=MASK_COLOR, linewidths=1.5)
    if cam.max() > 0:
        r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
        axes[2].plot(c, r, marker="+", color="yellow", markersize=14, markeredgewidth=2)
    axes[2].set_title("mask (green), map max (+)" if mask is not None else "map max (+)")
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(_mappable(), ax=axes[1], fraction=0.046, pad=0.02, label="map value")
    if title:
        fig.suptitle(_fit(title, fig, 12))
    return _save(fig, path)


def plot_cam_gallery(image: np.ndarray, maps: dict[str, np.ndarray], mask: np.ndarray | None = None, *,
                     columns: int = 3, title: str | None = None, per_panel: bool = True) -> Figure:
    """The same slice under several CAMs: one panel per map, the mask outlined and each map's
    maximum marked (what the pointing game scores).

    Maps normalised across a whole scan can be faint on any one slice (the scan's strongest
    slice may be another), which would leave a panel without a visible map. With
    ``per_panel`` each map is drawn scaled to its own maximum, and the panel's title says
    what that maximum was (e.g. "peak 0.18": 18% of the scan's maximum for scan-normalised maps).

    Args:
        image: Windowed slice ``[H, W]`` in [0, 1].
        maps: ``{name: map [H, W] in [0, 1]}``, e.g. one per method and layer.
        mask: Optional boolean mask ``[H, W]``.
        columns: Panels per row.
        title: Figure title.
        per_panel: Scale each map to its own maximum (False: draw the values as they are).
    """
    image = _as_2d(image, "image")
    if not maps:
        raise ValueError("no maps to draw")
    rows = math.ceil(len(maps) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 3.1 * rows), layout="constrained",
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (name, cam) in zip(axes.ravel(), maps.items()):
        cam = np.clip(np.nan_to_num(_as_2d(cam, name).astype(float)), 0.0, None)
        peak = float(cam.max())
        _overlay(ax, image, cam / peak if per_panel and peak > 0 else cam)
        if mask is not None and np.any(mask):
            ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=MASK_COLOR, linewidths=1.0)
        if peak > 0:
            r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
            ax.plot(c, r, marker="+", color="yellow", markersize=11, markeredgewidth=2)
        ax.set_title(f"{name}\n(peak {peak:.2f})" if per_panel else name, fontsize=8)
    fig.colorbar(_mappable(), ax=axes[:, -1].tolist(), fraction=0.046, pad=0.02,
                 label="map value / panel's peak" if per_panel else "map value")
    if title:
        fig.suptitle(_fit(title, fig, 9), fontsize=9)
    return fig


def plot_cam_montage(x: torch.Tensor | np.ndarray, result: ScanCAM, top_k: int = 6,
                     masks: np.ndarray | None = None, *, slice_labels: np.ndarray | None = None,
                     channel: int = 0, show_importance: bool = True, title: str | None = None,
                     path: str | os.PathLike | None = None) -> Figure:
    """The ``top_k`` most important slices of a scan, with the map over each.

    Panels are ordered by importance (most important first) and titled with the slice
    number and the importance relative to the scan's most important slice. Below them,
    optionally, the importance along the scan (see :func:`plot_slice_importance`).

    Args:
        x: The model input ``[S, C, H, W]`` the maps were computed on.
        result: From :func:`~ichlib.explain.cam.scan_grad_cam`.
        top_k: Number of slices shown.
        masks: Optional boolean masks ``[S, H, W]`` of the sampled slices, outlined in green.
        slice_labels: Optional ``[S, 6]`` labels of the sampled slices, for the importance panel.
        channel: Input channel drawn as the background (0 = the first window).
        show_importance: Add the importance-along-the-scan panel.
        title: Figure title (default: the label and its probability).
        path: Save the figure here as PNG.
    """
    images = _as_numpy(x)
    if images.ndim != 4 or images.shape[0] != result.maps.shape[0]:
        raise ValueError(f"x must be [S={result.maps.shape[0]}, C, H, W], got {images.shape}")
    images = images[:, channel]
    positions = result.top_slices(top_k)
    k = max(1, len(positions))
    ncols = math.ceil(math.sqrt(k)) if k > 3 else k
    nrows = math.ceil(k / ncols)
    extra = 1 if show_importance else 0
    fig = plt.figure(figsize=(3.3 * ncols + 0.9, 3.3 * nrows + 2.4 * extra + 0.8), layout="constrained")
    grid = fig.add_gridspec(nrows + extra, ncols,
                            height_ratios=[3.3] * nrows + [2.0] * extra)
    peak = float(result.importance.max()) if result.importance.size else 0.0
    axes = []
    for i in range(nrows * ncols):
        ax = fig.add_subplot(grid[i // ncols, i % ncols])
        ax.set_axis_off()
        axes.append(ax)
        if i >= len(positions):
            continue
        pos = int(positions[i])
        _overlay(ax, images[pos], result.maps[pos])
        if masks is not None and np.any(masks[pos]):
            ax.contour(np.asarray(masks[pos], dtype=float), levels=[0.5], colors=MASK_COLOR,
                       linewidths=1.2)
        rel = result.importance[pos] / peak if peak > 0 else 0.0
        ax.set_title(f"slice {int(result.slice_indices[pos]) + 1}  ·  importance {rel:.0%}",
                     fontsize=10)
    fig.colorbar(_mappable(), ax=axes, fraction=0.03, pad=0.01,
                 label=f"Grad-CAM ({_norm_name(result.normalize)})")
    if show_importance:
        ax = fig.add_subplot(grid[nrows, :])
        _draw_importance(ax, result, slice_labels, highlight=positions)
    if title is None:
        title = f"Grad-CAM for '{result.label}' (p = {result.probability:.2f})"
    fig.suptitle(_fit(title, fig, 12))
    return _save(fig, path)


def plot_slice_importance(result: ScanCAM, slice_labels: np.ndarray | None = None, *,
                          title: str | None = None,
                          path: str | os.PathLike | None = None) -> Figure:
    """Per-slice importance along the scan, with the slices positive for the label shaded.

    Args:
        result: From :func:`~ichlib.explain.cam.scan_grad_cam`.
        slice_labels: Labels of the sampled slices: ``[S, 6]`` (columns as LABELS; the
            result's label column is used) or ``[S]`` booleans. Positive slices are shaded.
        title: Axes title (default: the label and its probability).
        path: Save the figure here as PNG.
    """
    fig, ax = plt.subplots(figsize=(8.5, 3.2), layout="constrained")
    _draw_importance(ax, result, slice_labels)
    ax.set_title(_fit(title or f"Slice importance for '{result.label}' (p = {result.probability:.2f})", fig, 12))
    return _save(fig, path)


#: The columns of a localisation table drawn by :func:`plot_localization`.
LOCALIZATION_METRICS = ("pointing_0mm", "pointing_5mm", "energy", "energy_in_brain", "dice")


def plot_localization(table: pd.DataFrame, label: str = "any", *, title: str | None = None,
                      path: str | os.PathLike | None = None) -> Figure:
    """Bars of a localisation table for one label: a group per score, a bar per method, with
    the bootstrap intervals as error bars.

    Args:
        table: From :func:`~ichlib.explain.localization.localization_table`.
        label: Which label's rows to draw.
        title: Figure title (default: the numbers of patients and slices scored).
        path: Save the figure here as PNG.

    Returns:
        The figure. When nothing was scored (no scan with blood), the axes say so.
    """
    rows = table[table["label"] == label] if "label" in table else table.iloc[:0]
    columns = [c for c in LOCALIZATION_METRICS if c in rows]
    fig, ax = plt.subplots(figsize=(10, 3.6), layout="constrained")
    if rows.empty or not columns:
        ax.text(0.5, 0.5, "no scan with blood in its mask:\nnothing to localise",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        width = 0.8 / len(rows)
        for i, (_, row) in enumerate(rows.iterrows()):
            values = np.array([row[c] for c in columns], dtype=float)
            low = values - np.array([row.get(f"{c}_ci_low", np.nan) for c in columns], dtype=float)
            high = np.array([row.get(f"{c}_ci_high", np.nan) for c in columns], dtype=float) - values
            ax.bar(np.arange(len(columns)) + (i - (len(rows) - 1) / 2) * width, values, width,
                   yerr=np.nan_to_num([low, high]), capsize=2, label=row["method"])
        ax.set_xticks(np.arange(len(columns)), [c.replace("_", " ") for c in columns])
        ax.set_ylim(0, 1)
        ax.set_ylabel("mean over slices with blood")
        ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars
    n = (int(rows["n_patients"].max()), int(rows["n_slices"].max())) if len(rows) else (0, 0)
    ax.set_title(_fit(title or f"'{label}': {n[0]} patients, {n[1]} slices with blood (95% CI over patients)",
                      fig, 9), fontsize=9)
    return _save(fig, path)


# --- helpers --------------------------------------------------------------------------

def _draw_importance(ax: Axes, result: ScanCAM, slice_labels: np.ndarray | None,
                     highlight: Sequence[int] | np.ndarray = ()) -> None:
    numbers = np.asarray(result.slice_indices) + 1
    importance = np.asarray(result.importance, dtype=float)
    positive = _positive_slices(result, slice_labels)
    if positive is not None and positive.any():
        half = _half_gaps(numbers)
        for lo, hi in _runs(positive):
            ax.axvspan(numbers[lo] - half[lo][0], numbers[hi] + half[hi][1], color=LABEL_SHADE,
                       alpha=0.15, linewidth=0)
        ax.fill_between([], [], color=LABEL_SHADE, alpha=0.15, label=f"slice labelled {result.label}")
    ax.plot(numbers, importance, "-o", color="tab:blue", markersize=4, label="importance")
    highlight = np.asarray(highlight, dtype=int)
    if highlight.size:
        ax.plot(numbers[highlight], importance[highlight], "o", markersize=9, markerfacecolor="none",
                markeredgecolor="black", label="shown above")
    ax.set_xlabel("slice number (sampled slices)")
    ax.set_ylabel("importance\n(mean ReLU Grad-CAM)")
    ax.set_ylim(bottom=0, top=max(float(importance.max(initial=0.0)) * 1.12, 1e-12))
    if len(numbers) > 1:
        ax.set_xlim(numbers.min() - 0.5, numbers.max() + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.8)


def _positive_slices(result: ScanCAM, slice_labels: np.ndarray | None) -> np.ndarray | None:
    if slice_labels is None:
        return None
    labels = _as_numpy(slice_labels)
    if labels.ndim == 2:
        labels = labels[:, label_index(result.label)]
    if labels.shape != (len(result.importance),):
        raise ValueError(f"slice_labels must be [S, 6] or [S] for S={len(result.importance)}, "
                         f"got {np.shape(slice_labels)}")
    return labels > 0.5


def _half_gaps(numbers: np.ndarray) -> list[tuple[float, float]]:
    """Half the distance to the previous / next sampled slice (0.5 at the ends)."""
    gaps = np.diff(numbers.astype(float))
    out = []
    for i in range(len(numbers)):
        left = gaps[i - 1] / 2 if i > 0 else 0.5
        right = gaps[i] / 2 if i < len(gaps) else 0.5
        out.append((max(left, 0.5), max(right, 0.5)))
    return out


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, stop) of each run of True."""
    runs, start = [], None
    for i, f in enumerate(flags):
        if f and start is None:
            start = i
        if not f and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(flags) - 1))
    return runs


def _overlay(ax: Axes, image: np.ndarray, cam: np.ndarray) -> None:
    """The slice in gray with the map on top; opacity grows with the map value."""
    cam = np.clip(np.nan_to_num(np.asarray(cam, dtype=float)), 0.0, 1.0)
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    ax.imshow(cam, cmap=CMAP, vmin=0, vmax=1, alpha=0.65 * np.sqrt(cam))
    ax.set_axis_off()


def _fit(title: str, fig: Figure, points: float) -> str:
    """``title`` broken into lines that fit the figure's width at ``points`` (a long synthetic
    note would otherwise run past the figure's edge and be cut)."""
    chars = int(fig.get_figwidth() * 72 / (0.65 * points))
    return "\n".join(textwrap.fill(line, max(20, chars)) for line in str(title).splitlines())


def _mappable() -> ScalarMappable:
    return ScalarMappable(norm=Normalize(0, 1), cmap=CMAP)


def _norm_name(normalize: str | None) -> str:
    return {"scan": "scan-normalised", "slice": "per-slice normalised"}.get(
        normalize or "", "un-normalised")


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().float().cpu().numpy()
    return np.asarray(a)


def _as_2d(a, name: str) -> np.ndarray:
    a = _as_numpy(a)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{name} must be [H, W], got shape {a.shape}")
    return a


def _save(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:

        path = Path(path)
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    return fig


def save_cam_montage(explained: ScanExplanation, path: str | os.PathLike, *, title: str | None = None,
                     top_k: int = 6) -> Path:
    """Draw an explained scan's ``top_k`` most important slices (:func:`plot_cam_montage`) into a
    PNG at ``path`` and close the figure: the figure of
    :func:`~ichlib.explain.report.write_cam_report` (``figure=save_cam_montage``).

    Returns:
        ``path``.
    """
    fig = plot_cam_montage(explained.x, explained.cam, top_k=top_k, title=title, path=path)
    plt.close(fig)
    return Path(path)
