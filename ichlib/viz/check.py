"""Figure checks: does a matplotlib figure read at a glance at the size JupyterLab shows it?

Each check draws the figure once (Agg) and looks at what was drawn:

- :func:`overlapping_texts`: two pieces of text on top of each other;
- :func:`texts_over_axes`: text lying on another panel (a title hidden behind the image above);
- :func:`clipped_texts`: text cut by the figure's edge or by its clip box;
- :func:`small_texts`: text under ``min_px`` pixels high once the figure is scaled to the
  notebook's width (JupyterLab shrinks wider images to fit);
- :func:`legends_over_data`: a legend drawn over lines, bars, violins or points;
- :func:`empty_images`: an image or heatmap panel with nothing to see (all ~0, or transparent);
- :func:`fractional_ticks`: tick labels such as 0.5 on an axis that counts things.

:func:`figure_problems` runs all but the last and returns one readable line per problem, so a
test can assert ``figure_problems(fig) == []``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import Collection, PathCollection, QuadMesh
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.legend import Legend
from matplotlib.text import Text
from matplotlib.transforms import Bbox

#: Width (CSS pixels) of a JupyterLab output area: wider figures are shrunk to it. JupyterLab 4.6
#: in a 1500 px wide window gives 1053 px (tests/test_browser.py measures it); a little less
#: leaves room for a narrower window.
DISPLAY_WIDTH_PX = 1000
#: Smallest text height, in pixels on screen, that reads at a glance.
MIN_TEXT_PX = 9.0
#: Overlaps of at most this many pixels (in either direction) are anti-aliasing, not a problem.
TOLERANCE_PX = 1.5


@contextmanager
def _recording_texts() -> Iterator[list[Text]]:
    """Collect every :class:`~matplotlib.text.Text` whose ``draw`` runs inside the block."""
    drawn: list[Text] = []
    original = Text.draw

    def draw(self: Text, renderer) -> None:
        drawn.append(self)
        original(self, renderer)

    Text.draw = draw
    try:
        yield drawn
    finally:
        Text.draw = original


def drawn_texts(fig: Figure) -> list[Text]:
    """The visible, non-empty texts of ``fig`` that a draw puts on the canvas, in drawing order.

    Tick labels outside the view, the labels of hidden axes and empty strings are left out.
    """
    with _recording_texts() as drawn:
        _draw(fig)
    seen: set[int] = set()
    texts = []
    for text in drawn:
        if id(text) in seen or not text.get_visible() or not text.get_text().strip():
            continue
        if text.get_alpha() == 0:
            continue
        seen.add(id(text))
        texts.append(text)
    return texts


def _draw(fig: Figure) -> None:
    """Draw ``fig`` on an Agg canvas (giving it one if it has none), laying it out."""
    if fig.canvas is None or not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    fig.canvas.draw()


def _renderer(fig: Figure):
    return fig.canvas.get_renderer()


def _bbox(text: Text, renderer) -> Bbox:
    return text.get_window_extent(renderer)


def _corners(box: Bbox) -> np.ndarray:
    return np.array([[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1]])


def _text_corners(text: Text, renderer) -> np.ndarray:
    """The four corners (display pixels) of a text's box, turned with the text."""
    box = _bbox(text, renderer)
    angle = np.deg2rad(text.get_rotation() % 180)
    if np.isclose(np.sin(2 * angle), 0.0):  # upright or on its side: the box is exact
        return _corners(box)
    rotation = text.get_rotation()
    text.set_rotation(0)
    try:
        upright = _bbox(text, renderer)
    finally:
        text.set_rotation(rotation)
    c, s = np.cos(angle), np.sin(angle)
    turned = _corners(Bbox.from_bounds(0, 0, upright.width, upright.height)) @ np.array([[c, s], [-s, c]])
    return turned - turned.min(axis=0) + [box.x0, box.y0]


def _overlap(a: np.ndarray, b: np.ndarray, tol: float = TOLERANCE_PX) -> bool:
    """Whether two convex quadrilaterals (corners in order) overlap by more than ``tol`` pixels
    along every axis that could separate them (separating-axis test)."""
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        for edge in edges:
            normal = np.array([-edge[1], edge[0]])
            length = np.hypot(*normal)
            if length == 0:
                continue
            pa, pb = a @ normal / length, b @ normal / length
            if min(pa.max(), pb.max()) - max(pa.min(), pb.min()) <= tol:
                return False
    return True


def _describe(text: Text) -> str:
    words = " ".join(text.get_text().split())
    return repr(words if len(words) <= 40 else words[:37] + "...")


def overlapping_texts(fig: Figure, texts: list[Text] | None = None) -> list[tuple[Text, Text]]:
    """Pairs of drawn texts whose boxes overlap (rotated texts by their upright bounding box)."""
    texts = drawn_texts(fig) if texts is None else texts
    renderer = _renderer(fig)
    boxes = [_text_corners(t, renderer) for t in texts]
    return [(texts[i], texts[j]) for i in range(len(texts)) for j in range(i + 1, len(texts))
            if _overlap(boxes[i], boxes[j])]


def _has_content(ax: Axes) -> bool:
    """Whether a panel shows anything (a blank grid cell of a montage does not)."""
    if not ax.get_visible():
        return False
    return bool(ax.axison or ax.images or ax.lines or ax.patches or ax.collections)


def _owner(text: Text) -> Axes | None:
    axes = text.axes
    return axes if isinstance(axes, Axes) else None


def texts_over_axes(fig: Figure, texts: list[Text] | None = None) -> list[tuple[Text, Axes]]:
    """Texts lying on a panel they do not belong to: a title over the image above, a figure
    title over a plot. Texts of twin axes (the same box) are not counted."""
    texts = drawn_texts(fig) if texts is None else texts
    renderer = _renderer(fig)
    panels = [(ax, ax.get_window_extent(renderer)) for ax in fig.axes if _has_content(ax)]
    found = []
    for text in texts:
        corners, owner = _text_corners(text, renderer), _owner(text)
        own = owner.get_window_extent(renderer) if owner is not None else None
        for ax, panel in panels:
            if ax is owner or (own is not None and np.allclose(own.bounds, panel.bounds)):
                continue
            if _overlap(corners, _corners(panel)):
                found.append((text, ax))
    return found


def clipped_texts(fig: Figure, texts: list[Text] | None = None) -> list[Text]:
    """Texts that run over the figure's edge, or out of the clip box they are clipped to."""
    texts = drawn_texts(fig) if texts is None else texts
    renderer = _renderer(fig)
    edge = fig.bbox.padded(TOLERANCE_PX)
    found = []
    for text in texts:
        box = _bbox(text, renderer)
        clip = text.get_clip_box() if text.get_clip_on() else None
        inside_clip = clip is None or clip.padded(TOLERANCE_PX).contains(box.x0, box.y0) and \
            clip.padded(TOLERANCE_PX).contains(box.x1, box.y1)
        if not (edge.contains(box.x0, box.y0) and edge.contains(box.x1, box.y1)) or not inside_clip:
            found.append(text)
    return found


def display_scale(fig: Figure, display_width_px: float = DISPLAY_WIDTH_PX) -> float:
    """How much JupyterLab shrinks the figure: its tight width (as the inline backend crops it)
    against ``display_width_px``; 1.0 when it fits."""
    _draw(fig)
    width_px = fig.get_tightbbox(_renderer(fig)).width * fig.dpi
    return min(1.0, display_width_px / width_px) if width_px > 0 else 1.0


def small_texts(fig: Figure, display_width_px: float = DISPLAY_WIDTH_PX, min_px: float = MIN_TEXT_PX,
                texts: list[Text] | None = None) -> list[tuple[Text, float]]:
    """Texts smaller than ``min_px`` screen pixels at the displayed size, with their size.

    The size on screen is the font size in points times ``dpi / 72``, times
    :func:`display_scale`.
    """
    texts = drawn_texts(fig) if texts is None else texts
    scale = display_scale(fig, display_width_px)
    sizes = [(t, t.get_fontsize() * fig.dpi / 72.0 * scale) for t in texts]
    return [(t, px) for t, px in sizes if px < min_px]


def _data_paths(ax: Axes) -> Iterator[tuple[object, bool]]:
    """Each data artist of ``ax`` as ``(display path or points, filled)``."""
    for line in ax.lines:
        if line.get_visible():
            yield line.get_transform().transform_path(line.get_path()), False
    for patch in ax.patches:
        if patch.get_visible():
            yield patch.get_transform().transform_path(patch.get_path()), True
    for collection in ax.collections:
        if not collection.get_visible():
            continue
        if isinstance(collection, PathCollection) and len(collection.get_offsets()):
            yield collection.get_offset_transform().transform(collection.get_offsets()), False
        elif isinstance(collection, Collection):
            transform = collection.get_transform()
            for path in collection.get_paths():
                yield transform.transform_path(path), True


def legends_over_data(fig: Figure) -> list[Legend]:
    """Legends drawn over a line, bar, band, violin or point of their own axes."""
    _draw(fig)
    renderer = _renderer(fig)
    found = []
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None or not legend.get_visible():
            continue
        box = legend.get_window_extent(renderer).shrunk(0.98, 0.98)
        for drawn, filled in _data_paths(ax):
            if isinstance(drawn, np.ndarray):
                inside = (drawn[:, 0] >= box.x0) & (drawn[:, 0] <= box.x1) & (drawn[:, 1] >= box.y0)
                hit = bool(np.any(inside & (drawn[:, 1] <= box.y1)))
            else:
                hit = drawn.intersects_bbox(box, filled=filled)
            if hit:
                found.append(legend)
                break
    return found


def empty_images(fig: Figure, atol: float = 1e-6) -> list[AxesImage | QuadMesh]:
    """Image and heatmap artists that show nothing: every value ~0 (or masked or NaN), or fully
    transparent (alpha 0, an alpha array of zeros, an RGBA image with zero alpha)."""
    found = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for artist in [*ax.images, *[c for c in ax.collections if isinstance(c, QuadMesh)]]:
            if artist.get_visible() and _shows_nothing(artist, atol):
                found.append(artist)
    return found


def _shows_nothing(artist: AxesImage | QuadMesh, atol: float) -> bool:
    alpha = artist.get_alpha()
    if alpha is not None and np.all(np.asarray(alpha) <= atol):
        return True
    data = np.ma.masked_invalid(np.ma.asarray(artist.get_array(), dtype=float))
    if data.ndim == 3 and data.shape[-1] == 4 and np.ma.all(data[..., 3] <= atol):
        return True
    values = data.compressed()
    return values.size == 0 or bool(np.all(np.abs(values) <= atol))


def _drawn_ticks(axis: Axis) -> list:
    return axis._update_ticks()  # the ticks inside the view, as a draw places them


def fractional_ticks(ax: Axes, which: str = "y") -> list[float]:
    """Tick values with a fraction (0.5, 1.5) on an axis of ``ax`` that should count things.

    Args:
        ax: The axes.
        which: ``"x"`` or ``"y"``.
    """
    axis = ax.yaxis if which == "y" else ax.xaxis
    _draw(ax.figure)
    values = [float(t.get_loc()) for t in _drawn_ticks(axis) if t.label1.get_visible()]
    return [v for v in values if abs(v - round(v)) > 1e-9]


def figure_problems(fig: Figure, display_width_px: float = DISPLAY_WIDTH_PX,
                    min_px: float = MIN_TEXT_PX) -> list[str]:
    """Every problem the checks find, one readable line each (empty when the figure reads).

    Args:
        fig: The figure, as a notebook shows it.
        display_width_px: The notebook's output width (:data:`DISPLAY_WIDTH_PX`).
        min_px: The smallest readable text height on screen (:data:`MIN_TEXT_PX`).
    """
    texts = drawn_texts(fig)
    lines = [f"texts overlap: {_describe(a)} and {_describe(b)}"
             for a, b in overlapping_texts(fig, texts)]
    lines += [f"text {_describe(t)} lies on another panel ({_panel_name(ax)})"
              for t, ax in texts_over_axes(fig, texts)]
    lines += [f"text {_describe(t)} is clipped" for t in clipped_texts(fig, texts)]
    lines += [f"text {_describe(t)} is {px:.1f} px high on screen (< {min_px:g})"
              for t, px in small_texts(fig, display_width_px, min_px, texts)]
    lines += [f"legend {_describe(leg.get_texts()[0]) if leg.get_texts() else ''} covers data"
              for leg in legends_over_data(fig)]
    lines += [f"empty image panel ({_panel_name(a.axes)})" for a in empty_images(fig)]
    return lines


def _panel_name(ax: Axes | None) -> str:
    if ax is None:
        return "figure"
    title = ax.get_title() or ax.get_title("left") or ax.get_label() or "untitled"
    return f"panel {_describe(Text(text=title))}"
