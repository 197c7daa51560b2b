"""Small plotting helpers shared by the notebooks (matplotlib, headless-safe): slices, montages,
panel titles with short subtype names, the footer note, saving."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ichlib.io.atomic import atomic_path
from ichlib.labels import LABELS, SUBTYPES

#: One colour per subtype, used consistently in every figure.
SUBTYPE_COLORS: dict[str, str] = {
    "intraparenchymal": "tab:red",
    "intraventricular": "tab:purple",
    "subarachnoid": "tab:orange",
    "epidural": "tab:green",
    "subdural": "tab:cyan",
    "any": "gold",
}

#: The usual short names of the subtypes, for panel titles (the key goes in the footer).
ABBREVIATIONS: dict[str, str] = {"intraparenchymal": "IPH", "intraventricular": "IVH",
                                 "subarachnoid": "SAH", "epidural": "EDH", "subdural": "SDH"}

SYNTHETIC_NOTE = "SYNTHETIC phantom data - not patient data, no clinical meaning"

#: Font sizes (points) that read at JupyterLab's display size (checked by ichlib.viz.check).
TITLE_SIZE = 10.0
NOTE_SIZE = 9.5


def abbreviation_key(subtypes: Sequence[str] = SUBTYPES) -> str:
    """``"IPH intraparenchymal  IVH intraventricular ..."``: the key to :data:`ABBREVIATIONS`."""
    return "   ".join(f"{ABBREVIATIONS[s]} {s}" for s in subtypes)


def slice_title(number: int, labels: Sequence[int] | np.ndarray) -> str:
    """A panel title such as ``"#39 EDH"`` or ``"#12 no blood"``.

    Args:
        number: The 1-based slice number.
        labels: The slice's labels ``[6]`` in :data:`~ichlib.labels.LABELS` order.
    """
    names = [ABBREVIATIONS[n] for n, v in zip(LABELS, labels) if n != "any" and v]
    return f"#{number} " + ("+".join(names) if names else "no blood")


def show_slice(ax: plt.Axes, image: np.ndarray, mask: np.ndarray | None = None,
               title: str | None = None, color: str = "red", vmin: float = 0.0,
               vmax: float = 1.0, fontsize: float = TITLE_SIZE) -> plt.Axes:
    """Draw a (windowed) slice in grey with an optional mask outline.

    Args:
        ax: Target axes.
        image: ``[H, W]`` (or ``[H, W, 3]``) image.
        mask: Optional boolean ``[H, W]``; its outline is drawn in ``color``.
        title: Optional axes title.
        color: Outline colour.
        vmin: Grey-scale minimum.
        vmax: Grey-scale maximum.
        fontsize: Title size in points.
    """
    ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    if mask is not None and np.any(mask):
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=1.0)
    if title:
        ax.set_title(title, fontsize=fontsize)
    ax.set_axis_off()
    return ax


def add_note(fig: plt.Figure, note: str | None) -> None:
    """Put ``note`` (e.g. :data:`SYNTHETIC_NOTE`) under the figure, at a size that reads."""
    if note:
        fig.supxlabel(note, fontsize=NOTE_SIZE, color="0.25")


def montage(images: Sequence[np.ndarray], titles: Sequence[str] | None = None,
            masks: Sequence[np.ndarray | None] | None = None, ncols: int = 8,
            size: float = 1.8, suptitle: str | None = None, footer: str | None = None,
            fontsize: float = TITLE_SIZE) -> plt.Figure:
    """A grid of slices, each with an optional mask outline and title.

    Each row gets room for its titles (constrained layout), so no title hides behind the image
    above it.

    Args:
        images: ``[H, W]`` images, windowed to [0, 1].
        titles: One title per image (may hold line breaks).
        masks: One mask (or None) per image, outlined in red.
        ncols: Panels per row.
        size: Width of a panel in inches.
        suptitle: The figure's title.
        footer: Lines under the figure (a key, the synthetic-data note).
        fontsize: Panel title size in points.
    """
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    lines = max((t.count("\n") + 1 for t in titles or [] if t), default=0)
    aspect = images[0].shape[0] / images[0].shape[1] if n else 1.0
    row_height = size * aspect + lines * fontsize * 1.5 / 72 + 0.05
    extra = (0.35 if suptitle else 0.0) + (0.2 + 0.2 * footer.count("\n") if footer else 0.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, row_height * nrows + extra),
                             squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        if i < n:
            show_slice(ax, images[i], None if masks is None else masks[i],
                       None if titles is None else titles[i], fontsize=fontsize)
        else:
            ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle, fontsize=TITLE_SIZE + 1)
    add_note(fig, footer)
    return fig


def save_figure(fig: plt.Figure, figures_dir: str | os.PathLike, name: str, dpi: int = 110) -> Path:
    """Save ``fig`` as ``figures_dir/name.png`` atomically and return the path."""
    path = Path(figures_dir) / f"{name}.png"
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return path
