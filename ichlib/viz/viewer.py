"""An interactive slice viewer for a CT scan: slice slider, window, mask and Grad-CAM overlays.

:class:`SliceViewer` keeps its state (slice, window, overlays) in plain methods that return
numbers, strings, RGB frames and PNG bytes, so it is testable without a browser. The
ipywidgets controls are a thin layer over those methods: every change re-renders the slice
with matplotlib (Agg) into PNG bytes shown in an ``ipywidgets.Image``.

Interactive or static: with ``interactive=None`` (the default), :func:`display_mode` decides
when the viewer is displayed, by the first rule that applies:

1. ``ICHLIB_VIEWER=static`` or ``ICHLIB_VIEWER=interactive`` in the environment.
2. Static outside a Jupyter kernel (plain Python, terminal IPython) or without ipywidgets.
3. Static when the cell was sent by a headless executor: papermill, ``nbconvert --execute``
   and nbclient send their execute requests with ``allow_stdin=False`` (nobody can answer
   ``input()``), while the front ends that draw widgets (JupyterLab, Notebook 7, VS Code)
   send ``True``. (Voila also executes with ``allow_stdin=False``; pass ``interactive=True``
   there.)
4. Otherwise interactive.

The static view is a montage of evenly spaced slices with the same window and overlays,
displayed as PNG bytes, so it shows in executed notebooks whatever the matplotlib backend.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from scipy import ndimage

from ichlib.errors import ConfigError, DataError
from ichlib.labels import LABELS, SUBTYPES
from ichlib.preprocess.sampling import uniform_indices
from ichlib.preprocess.windowing import WINDOWS, window
from ichlib.viz.figures import ABBREVIATIONS, NOTE_SIZE, TITLE_SIZE, abbreviation_key

#: Colormap of Grad-CAM maps, as in :mod:`ichlib.cam_plots`.
CAM_CMAP = "turbo"
#: Colour of the hemorrhage mask (matplotlib's "lime").
MASK_RGB = (0.0, 1.0, 0.0)
#: Name shown in the preset list when level and width match no preset.
CUSTOM = "custom"
#: Environment variable that forces the display mode ("static" or "interactive").
MODE_ENV = "ICHLIB_VIEWER"
MASK_STYLES = ("outline", "fill")
LEVEL_RANGE = (-1024.0, 3071.0)
WIDTH_RANGE = (1.0, 4096.0)


class SliceViewer:
    """Page through a CT scan with a window and optional mask and Grad-CAM overlays.

    Args:
        volume: An :class:`~ichlib.io.volume.Volume` (or anything with ``.hu`` and
            ``.spacing``, such as a phantom), or HU values ``[N, H, W]``.
        mask: Hemorrhage mask ``[N, H, W]`` (bool, or nonzero = blood).
        cam: Grad-CAM maps ``[N, H, W]`` in [0, 1], e.g. from
            :func:`ichlib.explain.report.maps_to_volume`.
        labels: Per-slice labels for the title: ``[N, 6]`` with columns
            :data:`~ichlib.labels.LABELS`, a table with those columns (or the five subtypes;
            rows ordered by ``slice_number`` when present), or a mapping name -> ``[N]``.
        name: Scan name put before the slice number in the title.
        note: A line under the image (e.g. ``ichlib.viz.figures.SYNTHETIC_NOTE``).
        window_preset: Initial window, a name from :data:`~ichlib.preprocess.windowing.WINDOWS`.
        slice_index: Initial 0-based slice; default the slice with the most mask (or map)
            voxels, else the middle one.
        mask_style: ``"outline"`` or ``"fill"``.
        mask_opacity: Opacity of the mask colour, in [0, 1].
        cam_opacity: Opacity of the map at value 1 (it grows with the square root of the value).
        interactive: True for widgets, False for the static montage, None to decide at
            display time (see the module docstring).
        size: Width of the rendered slice figure in inches (at 100 dpi).

    Raises:
        DataError: Arrays of the wrong shape, NaN or Inf values, maps outside [0, 1].
        ConfigError: An unknown preset or mask style, or an opacity outside [0, 1].
    """

    def __init__(self, volume: Any, mask: Any = None, cam: Any = None, labels: Any = None, *,
                 name: str | None = None, note: str | None = None, window_preset: str = "brain",
                 slice_index: int | None = None, mask_style: str = "outline",
                 mask_opacity: float = 0.8, cam_opacity: float = 0.65,
                 interactive: bool | None = None, size: float = 5.0) -> None:
        self.path = getattr(volume, "path", None)
        self.hu = _volume_array(volume, self.path)
        self.spacing = tuple(float(s) for s in getattr(volume, "spacing", (1.0, 1.0, 1.0)))
        self.mask = _overlay_array(mask, "mask", self.hu.shape, self.path)
        self.cam = _overlay_array(cam, "cam", self.hu.shape, self.path)
        self.labels = _labels_array(labels, self.n_slices, self.path)
        self.name, self.note, self.size = name, note, float(size)
        self.interactive = interactive
        self.show_mask, self.show_cam = self.mask is not None, self.cam is not None
        self.mask_style, self.mask_opacity, self.cam_opacity = "outline", 0.8, 0.65
        self.preset, self.level, self.width = CUSTOM, 0.0, 1.0
        self.slice_index = 0
        self._controls: _Controls | None = None
        self.set_preset(window_preset)
        self.set_mask(style=mask_style, opacity=mask_opacity)
        self.set_cam(opacity=cam_opacity)
        self.set_slice(self._default_slice() if slice_index is None else slice_index)

    # --- state ------------------------------------------------------------------------

    @property
    def n_slices(self) -> int:
        """Number of slices in the scan."""
        return int(self.hu.shape[0])

    def set_slice(self, index: int) -> int:
        """Go to 0-based slice ``index``, clamped to the scan; returns the slice shown."""
        self.slice_index = int(min(max(int(index), 0), self.n_slices - 1))
        self._changed()
        return self.slice_index

    def step(self, delta: int) -> int:
        """Move ``delta`` slices (negative = towards slice 1); returns the slice shown."""
        return self.set_slice(self.slice_index + int(delta))

    def set_preset(self, name: str) -> None:
        """Use a window preset from :data:`~ichlib.preprocess.windowing.WINDOWS`; sets level and width.

        Raises:
            ConfigError: If ``name`` is not a preset.
        """
        if name not in WINDOWS:
            raise ConfigError(f"unknown window preset {name!r}; known: {', '.join(WINDOWS)}")
        self.level, self.width = WINDOWS[name]
        self.preset = name
        self._changed()

    def set_window(self, level: float, width: float) -> None:
        """Set level and width in HU; the preset becomes the one they match, or ``custom``.

        Raises:
            ConfigError: If either is not finite or ``width <= 0``.
        """
        level, width = float(level), float(width)
        if not (np.isfinite(level) and np.isfinite(width) and width > 0):
            raise ConfigError(f"window needs a finite level and a width > 0, got {level}, {width}")
        self.level, self.width = level, width
        self.preset = next((n for n, lw in WINDOWS.items() if lw == (level, width)), CUSTOM)
        self._changed()

    def set_mask(self, show: bool | None = None, opacity: float | None = None,
                 style: str | None = None) -> None:
        """Turn the mask overlay on or off, and set its opacity or style (``None`` keeps it).

        Raises:
            ConfigError: Showing a mask that was not given, an opacity outside [0, 1], or an
                unknown style.
        """
        if show and self.mask is None:
            raise ConfigError("no mask was given to this viewer, so it cannot be shown")
        if style is not None and style not in MASK_STYLES:
            raise ConfigError(f"mask style must be one of {MASK_STYLES}, got {style!r}")
        self.show_mask = self.show_mask if show is None else bool(show)
        self.mask_opacity = self.mask_opacity if opacity is None else _opacity(opacity, "mask")
        self.mask_style = self.mask_style if style is None else style
        self._changed()

    def set_cam(self, show: bool | None = None, opacity: float | None = None) -> None:
        """Turn the Grad-CAM overlay on or off, and set its opacity (``None`` keeps it).

        Raises:
            ConfigError: Showing maps that were not given, or an opacity outside [0, 1].
        """
        if show and self.cam is None:
            raise ConfigError("no Grad-CAM maps were given to this viewer, so none can be shown")
        self.show_cam = self.show_cam if show is None else bool(show)
        self.cam_opacity = self.cam_opacity if opacity is None else _opacity(opacity, "cam")
        self._changed()

    def slice_labels(self, index: int | None = None) -> list[str]:
        """Names of the labels set on a slice: subtypes first, then ``any``."""
        if self.labels is None:
            return []
        row = self.labels[self._index(index)]
        names = [n for n in SUBTYPES if row[LABELS.index(n)]]
        return names + (["any"] if row[LABELS.index("any")] else [])

    def title(self, index: int | None = None) -> str:
        """The title of a slice, e.g. ``"slice 17/40 · subdural, any"`` (1-based number)."""
        k = self._index(index)
        parts = [self.name] if self.name else []
        parts.append(f"slice {k + 1}/{self.n_slices}")
        if self.labels is not None:
            parts.append(", ".join(self.slice_labels(k)) or "no hemorrhage")
        return " · ".join(parts)

    def window_text(self) -> str:
        """The current window, e.g. ``"brain window: level 40 HU, width 80 HU"``."""
        return f"{self.preset} window: level {self.level:g} HU, width {self.width:g} HU"

    def frame(self, index: int | None = None) -> np.ndarray:
        """The slice as uint8 RGB ``[H, W, 3]``: windowed grey, then the map, then the mask."""
        k = self._index(index)
        rgb = np.repeat(window(self.hu[k], self.level, self.width)[..., None], 3, axis=-1)
        if self.show_cam and self.cam is not None:
            cam = self.cam[k]
            colours = colormaps[CAM_CMAP](cam)[..., :3].astype(np.float32)
            alpha = (self.cam_opacity * np.sqrt(cam))[..., None]
            rgb = rgb * (1.0 - alpha) + colours * alpha
        if self.show_mask and self.mask is not None:
            region = self.mask[k]
            if self.mask_style == "outline":
                thickness = max(1, region.shape[1] // 256)  # about 2 screen pixels
                region = region & ~ndimage.binary_erosion(region, iterations=thickness)
            a = self.mask_opacity
            rgb[region] = rgb[region] * (1.0 - a) + np.asarray(MASK_RGB, dtype=np.float32) * a
        return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)

    # --- rendering --------------------------------------------------------------------

    def figure(self, index: int | None = None) -> Figure:
        """The slice as a matplotlib figure (not registered with pyplot): title, image, legend."""
        k = self._index(index)
        height, width = self.hu.shape[1] * self._aspect(), self.hu.shape[2]
        image_width = self.size * (0.82 if self.cam is not None else 0.95)
        fig = Figure(figsize=(self.size, image_width * height / width + 1.0), dpi=100,
                     layout="constrained")
        ax = fig.add_subplot()
        ax.imshow(self.frame(k), aspect=self._aspect())
        ax.set_title(_wrap(self.title(k), 52), fontsize=10)
        ax.set_axis_off()
        if self.cam is not None:
            fig.colorbar(ScalarMappable(Normalize(0, 1), CAM_CMAP), ax=ax, fraction=0.046,
                         pad=0.02, label="Grad-CAM")
        fig.supxlabel(self._footer(), fontsize=NOTE_SIZE)
        return fig

    def render_png(self, index: int | None = None) -> bytes:
        """The slice figure as PNG bytes (what the widget shows)."""
        return _png(self.figure(index))

    def montage(self, n: int = 12, ncols: int = 6) -> Figure:
        """Up to ``n`` evenly spaced slices (first and last included) with the current settings."""
        if n < 1 or ncols < 1:
            raise ConfigError(f"montage needs n >= 1 and ncols >= 1, got {n} and {ncols}")
        picks = uniform_indices(self.n_slices, min(n, self.n_slices))
        ncols = min(ncols, len(picks))
        nrows = -(-len(picks) // ncols)
        fig = Figure(figsize=(2.2 * ncols + 0.6, 2.35 * nrows + 0.9), dpi=100, layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax in axes.flat[len(picks):]:
            fig.delaxes(ax)
        for ax, k in zip(axes.flat, picks):
            ax.set_axis_off()
            ax.imshow(self.frame(int(k)), aspect=self._aspect())
            short = ", ".join(ABBREVIATIONS[s] for s in self.slice_labels(int(k)) if s != "any")
            ax.set_title(f"slice {int(k) + 1}" + (f" · {short}" if short else ""), fontsize=TITLE_SIZE)
        if self.cam is not None and self.show_cam:
            fig.colorbar(ScalarMappable(Normalize(0, 1), CAM_CMAP), ax=fig.axes, fraction=0.02,
                         pad=0.01, label="Grad-CAM")
        head = f"{self.name} · " if self.name else ""
        fig.suptitle(f"{head}{len(picks)} of {self.n_slices} slices (static view)", fontsize=TITLE_SIZE + 2)
        key = abbreviation_key() if self.labels is not None else ""
        fig.supxlabel(self._footer() + (f"\n{key}" if key else ""), fontsize=NOTE_SIZE + 1)
        return fig

    def montage_png(self, n: int = 12, ncols: int = 6) -> bytes:
        """The montage as PNG bytes (what the static view shows)."""
        return _png(self.montage(n, ncols))

    # --- display ----------------------------------------------------------------------

    def display_mode(self) -> tuple[str, str]:
        """``("interactive" | "static", reason)`` for displaying now (see the module docstring)."""
        if self.interactive is not None:
            mode = "interactive" if self.interactive else "static"
            return mode, f"interactive={self.interactive} was passed"
        return display_mode()

    def widget(self):
        """The ipywidgets view (built once): the slice image beside its controls.

        Raises:
            ConfigError: If ipywidgets is not installed.
        """
        if self._controls is None:
            self._controls = _Controls(self)
        return self._controls.box

    def show(self) -> None:
        """Display the widgets or the static montage, per :meth:`display_mode`."""
        try:
            from IPython.display import Image, display
        except ImportError as exc:
            raise ConfigError("show() displays in Jupyter or IPython; in a script use "
                              "montage(), figure() or render_png()") from exc
        mode, _ = self.display_mode()
        if mode == "interactive":
            display(self.widget())
        else:
            display(Image(data=self.montage_png(), format="png"))

    def _ipython_display_(self) -> None:
        self.show()

    def __repr__(self) -> str:
        overlays = [n for n, a in (("mask", self.mask), ("cam", self.cam)) if a is not None]
        return (f"SliceViewer({self.n_slices} slices of {self.hu.shape[1]}x{self.hu.shape[2]}, "
                f"overlays: {', '.join(overlays) or 'none'}; {self.title()})")

    # --- internals --------------------------------------------------------------------

    def _index(self, index: int | None) -> int:
        if index is None:
            return self.slice_index
        if not 0 <= int(index) < self.n_slices:
            raise ConfigError(f"slice index {index} is outside 0..{self.n_slices - 1}")
        return int(index)

    def _default_slice(self) -> int:
        for overlay in (self.mask, self.cam):
            if overlay is not None and overlay.any():
                return int(np.argmax(overlay.reshape(self.n_slices, -1).sum(axis=1)))
        return self.n_slices // 2

    def _aspect(self) -> float:
        return self.spacing[1] / self.spacing[2] if self.spacing[2] > 0 else 1.0

    def _footer(self) -> str:
        bits = [self.window_text()]
        if self.mask is not None and self.show_mask:
            bits.append(f"mask: lime {self.mask_style}")
        return "  ·  ".join(bits) + (f"\n{self.note}" if self.note else "")

    def _changed(self) -> None:
        if self._controls is not None:
            self._controls.refresh()


def display_mode(environ: Mapping[str, str] | None = None, shell: Any = None) -> tuple[str, str]:
    """Decide between widgets and the static montage: ``(mode, reason)``.

    The rules are in the module docstring. ``environ`` and ``shell`` default to
    ``os.environ`` and the running IPython shell; tests pass their own.

    Raises:
        ConfigError: If ``ICHLIB_VIEWER`` holds something other than static/interactive.
    """
    environ = os.environ if environ is None else environ
    forced = environ.get(MODE_ENV, "").strip().lower()
    if forced:
        if forced not in ("static", "interactive"):
            raise ConfigError(f"{MODE_ENV}={forced!r}; use 'static' or 'interactive'")
        return forced, f"{MODE_ENV}={forced}"
    if shell is None:
        shell = _running_shell()
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return "static", "not running in a Jupyter kernel"
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return "static", "ipywidgets is not installed"
    request = _parent_request(shell, kernel)
    content = request.get("content") or {}
    if "allow_stdin" in content and not content["allow_stdin"]:
        return "static", "the cell was run by a headless executor (papermill/nbconvert: allow_stdin=False)"
    return "interactive", "a Jupyter front end runs this kernel"


def _running_shell() -> Any:
    import sys

    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython

    return get_ipython()


def _parent_request(shell: Any, kernel: Any) -> dict:
    """The execute request being run, or {} when it cannot be told."""
    try:
        parent = kernel.get_parent("shell")
    except Exception:  # older kernels have no get_parent(channel)
        parent = None
    if not parent:
        parent = getattr(shell, "parent_header", None)
    return parent if isinstance(parent, dict) else {}


def _wrap(title: str, width: int) -> str:
    """Break a title at its last " · " that keeps the first line within ``width`` characters."""
    if len(title) <= width or " · " not in title:
        return title
    cut = title.rfind(" · ", 0, width)
    cut = cut if cut > 0 else title.find(" · ")
    return title[:cut] + "\n" + title[cut + 3:]


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    return buffer.getvalue()


def _opacity(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{what} opacity must be in [0, 1], got {value}")
    return value


def _volume_array(volume: Any, path: Any) -> np.ndarray:
    hu = np.asarray(getattr(volume, "hu", volume))
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise DataError(path, f"the volume must be HU values [slices, H, W], got shape {hu.shape}")
    if not np.issubdtype(hu.dtype, np.number) or np.issubdtype(hu.dtype, np.complexfloating):
        raise DataError(path, f"the volume must hold real HU numbers, got dtype {hu.dtype}")
    hu = hu.astype(np.float32, copy=False)
    bad = hu.size - int(np.count_nonzero(np.isfinite(hu)))
    if bad:
        raise DataError(path, f"the volume has {bad} NaN or Inf voxels; refusing to guess their HU")
    return hu


def _overlay_array(values: Any, what: str, shape: tuple[int, ...], path: Any) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.shape != tuple(shape):
        raise DataError(path, f"{what} has shape {arr.shape} but the volume is {tuple(shape)}; "
                              f"they must match voxel for voxel")
    if arr.dtype == bool:
        return arr if what == "mask" else arr.astype(np.float32)
    arr = arr.astype(np.float32)
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise DataError(path, f"{what} has {bad} NaN or Inf values")
    if what == "mask":
        return arr > 0
    if arr.size and (arr.min() < -1e-4 or arr.max() > 1 + 1e-4):
        raise DataError(path, f"cam values must lie in [0, 1], got {arr.min():g}..{arr.max():g}; "
                              "normalise them (e.g. ichlib.explain.cam.normalize_scan)")
    return np.clip(arr, 0.0, 1.0)


def _labels_array(labels: Any, n: int, path: Any) -> np.ndarray | None:
    """Per-slice labels as bool ``[n, 6]`` in LABELS order."""
    if labels is None:
        return None
    if isinstance(labels, pd.DataFrame):
        if "patient_id" in labels and labels["patient_id"].nunique() > 1:
            raise DataError(path, "the label table holds several patients; pass one patient's rows")
        if "slice_number" in labels:
            labels = labels.sort_values("slice_number")
        labels = {c: labels[c].to_numpy() for c in labels.columns}
    if isinstance(labels, Mapping):
        missing = [s for s in SUBTYPES if s not in labels]
        if missing:
            raise DataError(path, f"the labels lack columns {missing}; expected {', '.join(LABELS)}")
        cols = [np.asarray(labels[s], dtype=float).reshape(-1) for s in SUBTYPES]
        if len({len(c) for c in cols}) > 1:
            raise DataError(path, "the label columns have different lengths")
        anyc = (np.asarray(labels["any"], dtype=float).reshape(-1) if "any" in labels
                else np.max(np.stack(cols), axis=0))
        arr = np.stack([anyc, *cols], axis=1)
    else:
        arr = np.asarray(labels, dtype=float)
    if arr.ndim != 2 or arr.shape != (n, len(LABELS)):
        raise DataError(path, f"labels must be [{n} slices, {len(LABELS)}] ({', '.join(LABELS)}), "
                              f"got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(path, "the labels hold NaN or Inf")
    return arr > 0.5


class _Controls:
    """The ipywidgets wiring: every control calls a :class:`SliceViewer` setter."""

    def __init__(self, viewer: SliceViewer) -> None:
        try:
            import ipywidgets as w
        except ImportError as exc:
            raise ConfigError("the interactive viewer needs ipywidgets (pip install ipywidgets)"
                              ) from exc
        v, self.viewer, self._syncing = viewer, viewer, False
        wide = w.Layout(width="340px")
        self.slice = w.IntSlider(min=1, max=v.n_slices, description="slice", layout=wide)
        self.preset = w.Dropdown(options=[*WINDOWS, CUSTOM], description="window", layout=wide)
        self.level = w.FloatSlider(min=LEVEL_RANGE[0], max=LEVEL_RANGE[1], step=1,
                                   description="level (HU)", layout=wide)
        self.width = w.FloatSlider(min=WIDTH_RANGE[0], max=WIDTH_RANGE[1], step=1,
                                   description="width (HU)", layout=wide)
        no_mask, no_cam = v.mask is None, v.cam is None
        self.mask = w.Checkbox(description="mask", disabled=no_mask, indent=False,
                               layout=w.Layout(width="110px"))
        self.mask_style = w.ToggleButtons(options=list(MASK_STYLES), disabled=no_mask,
                                          style={"button_width": "70px"})
        self.mask_opacity = w.FloatSlider(min=0, max=1, step=0.05, description="mask opacity",
                                          disabled=no_mask, layout=wide)
        self.cam = w.Checkbox(description="Grad-CAM", disabled=no_cam, indent=False,
                              layout=w.Layout(width="110px"))
        self.cam_opacity = w.FloatSlider(min=0, max=1, step=0.05, description="CAM opacity",
                                         disabled=no_cam, layout=wide)
        self.image = w.Image(format="png")
        for widget, css in ((self.slice, "ichlib-slice"), (self.image, "ichlib-frame")):
            widget.add_class(css)
        for widget in (self.slice, self.preset, self.level, self.width, self.mask_opacity,
                       self.cam_opacity):
            widget.style.description_width = "90px"
        for widget in (self.slice, self.preset, self.level, self.width, self.mask,
                       self.mask_style, self.mask_opacity, self.cam, self.cam_opacity):
            widget.observe(self._on_change, names="value")
        controls = w.VBox([self.slice, self.preset, self.level, self.width,
                           w.HBox([self.mask, self.mask_style]), self.mask_opacity,
                           self.cam, self.cam_opacity])
        self.box = w.HBox([self.image, controls])
        self.box.add_class("ichlib-slice-viewer")
        self.refresh()

    def _on_change(self, change: dict) -> None:
        if self._syncing:
            return
        v, owner, new = self.viewer, change["owner"], change["new"]
        if owner is self.slice:
            v.set_slice(new - 1)
        elif owner is self.preset:
            if new in WINDOWS:
                v.set_preset(new)
        elif owner in (self.level, self.width):
            v.set_window(self.level.value, self.width.value)
        elif owner in (self.mask, self.mask_style, self.mask_opacity):
            v.set_mask(self.mask.value, self.mask_opacity.value, self.mask_style.value)
        else:
            v.set_cam(self.cam.value, self.cam_opacity.value)

    def refresh(self) -> None:
        """Put the viewer's state into the controls and redraw the image."""
        v = self.viewer
        self._syncing = True
        try:
            self.slice.value = v.slice_index + 1
            self.preset.value = v.preset
            self.level.value, self.width.value = v.level, v.width
            self.mask.value, self.mask_style.value = v.show_mask, v.mask_style
            self.mask_opacity.value = v.mask_opacity
            self.cam.value, self.cam_opacity.value = v.show_cam, v.cam_opacity
        finally:
            self._syncing = False
        png = v.render_png()
        if png != self.image.value:
            self.image.value = png
