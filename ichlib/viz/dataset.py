"""Figures of the data notebooks (01-03): label prevalence and co-occurrence, scan lengths, HU
per tissue, one example per subtype, CT windows and their contrast, slice sampling.

Every figure is sized to read at JupyterLab's width (:mod:`ichlib.viz.check` tests them):
legends sit outside the data, count axes have integer ticks, and a label the data lacks is
named in the figure rather than left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ichlib.explore import BRAIN, ScanSlice, absent_tissues, label_names
from ichlib.labels import LABELS, SUBTYPES
from ichlib.preprocess.hu import BLOOD_HU
from ichlib.preprocess.windowing import WINDOWS, multi_window, window
from ichlib.viz.figures import SUBTYPE_COLORS, TITLE_SIZE, add_note, show_slice

#: The HU range the violins show; the share of voxels beyond it is written under each violin.
HU_RANGE: tuple[float, float] = (-30.0, 150.0)


def plot_label_prevalence(counts: pd.DataFrame, note: str = "") -> plt.Figure:
    """Positive share per label, at patient and at slice level (bars side by side).

    Args:
        counts: :func:`ichlib.io.label_counts`: ``patients_%`` and ``slices_%`` per label.
        note: A line under the figure (e.g. the synthetic-data note).
    """
    long = (counts[["patients_%", "slices_%"]].rename(columns={"patients_%": "patients",
                                                                "slices_%": "slices"})
            .reset_index().melt(id_vars="label", var_name="level", value_name="positive %"))
    fig, ax = plt.subplots(figsize=(9, 3.6), layout="constrained")
    sns.barplot(long, x="label", y="positive %", hue="level", ax=ax)
    ax.set_title("share of positive patients and slices per label", fontsize=TITLE_SIZE + 1)
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=20)
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), title="positive")
    add_note(fig, note)
    return fig


def plot_cooccurrence(co: pd.DataFrame, level: str = "patients", note: str = "") -> plt.Figure:
    """How often two subtypes occur together (the diagonal: how often each occurs).

    Args:
        co: :func:`ichlib.io.cooccurrence`, a ``5 x 5`` count table.
        level: What is counted, for the title.
        note: A line under the figure.
    """
    fig, ax = plt.subplots(figsize=(6.2, 5.0), layout="constrained")
    sns.heatmap(co, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax, annot_kws={"size": 11})
    ax.set_title(f"{level} with both subtypes (diagonal: with that subtype)", fontsize=TITLE_SIZE + 1)
    ax.tick_params(axis="x", rotation=30)
    ax.tick_params(axis="y", rotation=0)
    add_note(fig, note)
    return fig


def plot_scan_lengths(patients: pd.DataFrame, note: str = "") -> plt.Figure:
    """Histogram of slices per scan (one bar per length), counts on an integer axis.

    Args:
        patients: A patient table with ``n_slices``.
        note: A line under the figure.
    """
    fig, ax = plt.subplots(figsize=(7, 3.4), layout="constrained")
    sns.histplot(patients["n_slices"], discrete=True, ax=ax)
    ax.set(xlabel="slices per scan", ylabel="patients")
    ax.set_title(f"scan length: {patients['n_slices'].min()} to {patients['n_slices'].max()} slices",
                 fontsize=TITLE_SIZE + 1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    add_note(fig, note)
    return fig


def _tissue_label(tissue: str, rows: pd.DataFrame, hu_range: tuple[float, float]) -> str:
    if rows.empty:
        return tissue
    values = rows["HU"]
    above = float((values > hu_range[1]).mean() * 100)
    below = float((values < hu_range[0]).mean() * 100)
    scans = rows["patient_id"].nunique()
    lines = [tissue, f"{scans} scan{'s' if scans > 1 else ''}"]
    if above >= 0.5:
        lines.append(f"{above:.0f}% > {hu_range[1]:g} HU")
    if below >= 0.5:
        lines.append(f"{below:.0f}% < {hu_range[0]:g} HU")
    return "\n".join(lines)


def plot_hu_per_tissue(samples: pd.DataFrame, note: str = "",
                       hu_range: tuple[float, float] = HU_RANGE) -> plt.Figure:
    """Violins of HU inside each subtype's mask beside intracranial tissue without blood.

    Every subtype has its place on the x axis; one without voxels says so there. Voxels
    beyond ``hu_range`` (mask edges on bone, for instance) are counted under their violin.

    Args:
        samples: :func:`ichlib.explore.hu_samples`: ``tissue``, ``HU`` and ``patient_id``.
        note: A line under the figure.
        hu_range: The HU range shown.
    """
    order = [BRAIN, *SUBTYPES]
    palette = {BRAIN: "0.6", **{s: SUBTYPE_COLORS[s] for s in SUBTYPES}}
    fig, ax = plt.subplots(figsize=(10, 4.2), layout="constrained")
    shown = samples[samples["tissue"].isin(order)]
    sns.violinplot(shown, x="tissue", y="HU", hue="tissue", order=order, hue_order=order,
                   palette=palette, cut=0, density_norm="width", ax=ax, legend=False)
    band = ax.axhspan(*BLOOD_HU, color="tab:red", alpha=0.1, zorder=0)
    missing = absent_tissues(samples)
    for name in missing:
        ax.text(order.index(name), np.mean(hu_range), "no slice shows\nit alone",
                ha="center", va="center", fontsize=TITLE_SIZE, color="0.3")
    labels = [_tissue_label(t, samples[samples["tissue"] == t], hu_range) for t in order]
    ax.set_xticks(range(len(order)), labels)
    ax.set(ylim=hu_range, xlabel="", ylabel="HU")
    ax.set_title("HU inside each subtype's mask (slices with that subtype alone) and in brain",
                 fontsize=TITLE_SIZE + 1)
    ax.legend([band], [f"{BLOOD_HU[0]:g}-{BLOOD_HU[1]:g} HU:\nacute blood"], loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    add_note(fig, note)
    return fig


def plot_subtype_examples(examples: Mapping[str, ScanSlice | None], note: str = "") -> plt.Figure:
    """One slice per subtype in the brain window, its mask outlined in the subtype's colour.

    Args:
        examples: ``{subtype: slice}`` (:func:`ichlib.explore.lesion_slice`); a subtype that is
            missing or None gets a panel saying no slice has it.
        note: A line under the figure.
    """
    fig, axes = plt.subplots(1, len(SUBTYPES), figsize=(12, 3.4), layout="constrained")
    for ax, subtype in zip(axes, SUBTYPES):
        example = examples.get(subtype)
        if example is None:
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"{subtype}:\nno slice with\nthis label", ha="center", va="center",
                    fontsize=TITLE_SIZE, transform=ax.transAxes)
            continue
        show_slice(ax, window(example.hu, *WINDOWS["brain"]), example.mask,
                   f"{subtype}\npatient {example.patient_id}, slice {example.slice_number}",
                   color=SUBTYPE_COLORS[subtype])
    fig.suptitle("one example per subtype, brain window, mask outlined", fontsize=TITLE_SIZE + 1)
    add_note(fig, note)
    return fig


def plot_windows(hu: np.ndarray, mask: np.ndarray | None, title: str, note: str = "",
                 windows: Mapping[str, tuple[float, float]] = WINDOWS) -> plt.Figure:
    """One slice in raw HU and in each window, the mask outlined in red.

    Args:
        hu: HU values ``[H, W]``.
        mask: The slice's mask ``[H, W]`` or None.
        title: The figure's title (which slice).
        note: A line under the figure.
        windows: ``{name: (centre, width)}``.
    """
    n = 1 + len(windows)
    ncols = 3 if n > 4 else n
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.5 * nrows), squeeze=False,
                             layout="constrained")
    axes = axes.ravel()
    show_slice(axes[0], hu, None, "raw HU, -1000 to 2000", vmin=-1000, vmax=2000)
    for ax, (name, (c, w)) in zip(axes[1:], windows.items()):
        show_slice(ax, window(hu, c, w), mask, f"{name}: centre {c:g}, width {w:g}")
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.suptitle(title + ("; red: mask outline" if mask is not None and mask.any() else ""),
                 fontsize=TITLE_SIZE + 1)
    add_note(fig, note)
    return fig


def plot_composite(hu: np.ndarray, windows: Sequence[str] = ("brain", "subdural", "soft"),
                   note: str = "") -> plt.Figure:
    """Three windows as the red, green and blue channels, and the colour image they make.

    Args:
        hu: HU values ``[H, W]``.
        windows: Three window names, in R, G, B order.
        note: A line under the figure.
    """
    if len(windows) != 3:
        raise ValueError(f"a colour composite needs 3 windows, got {len(windows)}")
    composite = multi_window(hu, list(windows))
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.6), layout="constrained")
    for ax, channel, colour, name in zip(axes, composite, "RGB", windows):
        show_slice(ax, channel, None, f"{colour}: {name} window")
    axes[3].imshow(np.moveaxis(composite, 0, -1))
    axes[3].set_title("composite (RGB)", fontsize=TITLE_SIZE)
    axes[3].set_axis_off()
    fig.suptitle("the multi-window input: one window per channel", fontsize=TITLE_SIZE + 1)
    add_note(fig, note)
    return fig


def plot_contrast(contrast: pd.DataFrame, note: str = "") -> plt.Figure:
    """Mean lesion-to-brain contrast and contrast-to-noise ratio per window (bars: sd).

    Args:
        contrast: :func:`ichlib.explore.contrast_per_window`.
        note: A line under the figure.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for ax, column, what in zip(axes, ["contrast", "cnr"],
                                ["contrast (display units, 0-1)", "contrast-to-noise ratio"]):
        sns.barplot(contrast, x="window", y=column, errorbar="sd", color="tab:red", alpha=0.8, ax=ax)
        ax.set(ylabel=column, xlabel="window")
        ax.set_title(what, fontsize=TITLE_SIZE + 1)
    n = contrast["patient_id"].nunique()
    fig.suptitle(f"lesion against brain, mean over {n} patients (bars: sd)", fontsize=TITLE_SIZE + 1)
    add_note(fig, note)
    return fig


def _line_colour(labels: np.ndarray, k: int) -> str:
    names = label_names(labels[k])
    return SUBTYPE_COLORS[names[0]] if names else "yellow"


def plot_sampling(hu: np.ndarray, labels: np.ndarray, samplings: Mapping[str, np.ndarray],
                  title: str, note: str = "") -> plt.Figure:
    """A side view of a scan with the sampled slices drawn as lines, one panel per sampling.

    Lines are yellow on slices without blood and in the subtype's colour on slices with it;
    the legend names the scan's subtypes and says which no sampled slice shows.

    Args:
        hu: HU values ``[N, H, W]``.
        labels: Slice labels ``[N, 6]``.
        samplings: ``{name: 0-based slice indices}``.
        title: The figure's title.
        note: A line under the figure.
    """
    side = window(hu[:, :, hu.shape[2] // 2], *WINDOWS["brain"])
    n = hu.shape[0]
    fig, axes = plt.subplots(1, len(samplings), figsize=(5.2 * len(samplings) + 2.0, 4.4),
                             sharey=True, squeeze=False, layout="constrained")
    for ax, (name, chosen) in zip(axes[0], samplings.items()):
        ax.imshow(side, cmap="gray", aspect="auto", origin="lower", extent=(0, side.shape[1], 0.5, n + 0.5))
        for k in chosen:
            ax.axhline(k + 1, color=_line_colour(labels, int(k)), lw=1.4)
        ax.set_title(f"{name}: {len(chosen)} of {n} slices", fontsize=TITLE_SIZE + 1)
        ax.set_xlabel("row (anterior to posterior)")
    axes[0, 0].set_ylabel("SliceNumber")
    handles = [Line2D([], [], color="yellow", lw=2, label="no blood")]
    for subtype in SUBTYPES:
        if labels[:, LABELS.index(subtype)].any():
            sampled = any(labels[np.asarray(c), LABELS.index(subtype)].any() for c in samplings.values())
            handles.append(Line2D([], [], color=SUBTYPE_COLORS[subtype], lw=2,
                                  label=subtype + ("" if sampled else "\n(on no sampled slice)")))
    if len(handles) == 1:
        handles.append(Patch(color="none", label="(no blood\nin this scan)"))
    fig.legend(handles=handles, loc="outside right upper", title="slice")
    fig.suptitle(title, fontsize=TITLE_SIZE + 1)
    add_note(fig, note)
    return fig


def plot_repeats(indices: np.ndarray, n_slices: int, note: str = "") -> plt.Figure:
    """How often each slice of a short scan is used when ``S`` slices are sampled from it.

    Args:
        indices: The sampled 0-based indices (``S`` of them).
        n_slices: Slices in the scan.
        note: A line under the figure.
    """
    fig, ax = plt.subplots(figsize=(7, 3.0), layout="constrained")
    counts = np.bincount(np.asarray(indices), minlength=n_slices)
    ax.bar(np.arange(1, n_slices + 1), counts, color="tab:blue")
    ax.set(xlabel="SliceNumber", ylabel="times used", ylim=(0, counts.max() + 0.5))
    used = f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()} to {counts.max()}"
    ax.set_title(f"N = {n_slices} slices, S = {len(indices)}: each slice used {used} times",
                 fontsize=TITLE_SIZE + 1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    add_note(fig, note)
    return fig
