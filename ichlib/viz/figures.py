"""Small plotting helpers shared by the notebooks (matplotlib, headless-safe)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ichlib.io.atomic import atomic_path

#: One colour per subtype, used consistently in every figure.
SUBTYPE_COLORS: dict[str, str] = {
    "intraparenchymal": "tab:red",
    "intraventricular": "tab:purple",
    "subarachnoid": "tab:orange",
    "epidural": "tab:green",
    "subdural": "tab:cyan",
    "any": "gold",
}

SYNTHETIC_NOTE = "SYNTHETIC phantom data - not patient data, no clinical meaning"


def show_slice(ax: plt.Axes, image: np.ndarray, mask: np.ndarray | None = None,
               title: str | None = None, color: str = "red", vmin: float = 0.0,
               vmax: float = 1.0) -> plt.Axes:
    """Draw a (windowed) slice in grey with an optional mask outline.

    Args:
        ax: Target axes.
        image: ``[H, W]`` (or ``[H, W, 3]``) image.
        mask: Optional boolean ``[H, W]``; its outline is drawn in ``color``.
        title: Optional axes title.
        color: Outline colour.
        vmin: Grey-scale minimum.
        vmax: Grey-scale maximum.
    """
    ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    if mask is not None and np.any(mask):
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=1.0)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return ax


def montage(images: Sequence[np.ndarray], titles: Sequence[str] | None = None,
            masks: Sequence[np.ndarray | None] | None = None, ncols: int = 8,
            size: float = 1.8, suptitle: str | None = None) -> plt.Figure:
    """A grid of slices, each with an optional mask outline and title."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            show_slice(ax, images[i], None if masks is None else masks[i],
                       None if titles is None else titles[i])
        else:
            ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, figures_dir: str | os.PathLike, name: str, dpi: int = 110) -> Path:
    """Save ``fig`` as ``figures_dir/name.png`` atomically and return the path."""
    path = Path(figures_dir) / f"{name}.png"
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return path
