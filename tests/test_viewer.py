"""SliceViewer: its state (slice, window, overlays, title, frame) without a browser, the widget
wiring driven from Python, and the choice between widgets and the static montage."""

from __future__ import annotations

from types import SimpleNamespace

import nbformat
import numpy as np
import pandas as pd
import pytest

from ichlib.errors import ConfigError, DataError
from ichlib.io.volume import Volume
from ichlib.labels import LABELS
from ichlib.preprocess.windowing import WINDOWS
from ichlib.viz.viewer import SliceViewer, display_mode

N, SIZE = 8, 32
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _volume() -> Volume:
    """Slice k is 10*k HU inside a disc, -1000 HU (air) outside."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (yy - 16) ** 2 + (xx - 16) ** 2 < 12 ** 2
    hu = np.full((N, SIZE, SIZE), -1000.0, dtype=np.float32)
    for k in range(N):
        hu[k][disc] = 10.0 * k
    return Volume(hu=hu, spacing=(5.0, 0.5, 0.5))


def _mask() -> np.ndarray:
    """A 6x6 square on slices 4 and 5 (more voxels on 5)."""
    mask = np.zeros((N, SIZE, SIZE), dtype=bool)
    mask[4, 10:16, 10:16] = True
    mask[5, 10:17, 10:17] = True
    return mask


def _cam() -> np.ndarray:
    cam = np.zeros((N, SIZE, SIZE), dtype=np.float32)
    cam[:, 20:24, 20:24] = 1.0
    return cam


def _labels() -> np.ndarray:
    """Subdural (and so any) on slices 4 and 5, columns as LABELS."""
    labels = np.zeros((N, len(LABELS)), dtype=np.float32)
    labels[4:6, LABELS.index("subdural")] = 1
    labels[4:6, LABELS.index("any")] = 1
    return labels


@pytest.fixture
def viewer() -> SliceViewer:
    return SliceViewer(_volume(), mask=_mask(), cam=_cam(), labels=_labels(), interactive=False)


# --- state ----------------------------------------------------------------------------

def test_slice_index_clamps_to_the_scan(viewer):
    assert viewer.set_slice(-5) == 0
    assert viewer.set_slice(100) == N - 1
    assert viewer.step(-2) == N - 3
    assert viewer.step(10) == N - 1
    with pytest.raises(ConfigError, match="outside 0..7"):
        viewer.frame(N)


def test_starts_on_the_slice_with_most_mask_or_the_middle():
    assert SliceViewer(_volume(), mask=_mask()).slice_index == 5
    assert SliceViewer(_volume()).slice_index == N // 2
    assert SliceViewer(_volume(), slice_index=2).slice_index == 2


@pytest.mark.parametrize("name", list(WINDOWS))
def test_preset_sets_level_and_width(viewer, name):
    viewer.set_preset(name)
    assert (viewer.level, viewer.width) == WINDOWS[name]
    assert viewer.preset == name
    assert f"level {WINDOWS[name][0]:g} HU, width {WINDOWS[name][1]:g} HU" in viewer.window_text()


def test_moving_level_or_width_names_the_matching_preset_or_custom(viewer):
    viewer.set_window(*WINDOWS["subdural"])
    assert viewer.preset == "subdural"
    viewer.set_window(45, 80)
    assert viewer.preset == "custom" and (viewer.level, viewer.width) == (45, 80)
    with pytest.raises(ConfigError, match="unknown window preset 'lung'"):
        viewer.set_preset("lung")
    with pytest.raises(ConfigError, match="width > 0"):
        viewer.set_window(40, 0)


def test_frame_is_the_windowed_slice_computed_by_hand(viewer):
    viewer.set_mask(show=False)
    viewer.set_cam(show=False)
    viewer.set_window(level=40, width=80)  # 0 HU -> 0, 40 HU -> 0.5, 80 HU -> 1
    frame = viewer.frame(4)  # 40 HU inside the disc
    assert frame.shape == (SIZE, SIZE, 3) and frame.dtype == np.uint8
    assert tuple(frame[16, 16]) == (128, 128, 128)  # round(0.5 * 255)
    assert tuple(frame[0, 0]) == (0, 0, 0)  # air
    assert tuple(viewer.frame(0)[16, 16]) == (0, 0, 0)  # 0 HU is the window's bottom
    viewer.set_window(level=0, width=80)
    assert tuple(viewer.frame(4)[16, 16]) == (255, 255, 255)


def test_frame_changes_with_the_slice_and_the_window(viewer):
    a = viewer.frame(3)
    assert not np.array_equal(a, viewer.frame(4))
    viewer.set_preset("bone")
    assert not np.array_equal(a, viewer.frame(3))


def test_overlays_appear_only_when_toggled(viewer):
    viewer.set_slice(5)
    viewer.set_mask(show=False)
    viewer.set_cam(show=False)
    plain = viewer.frame().astype(int)
    assert (plain[..., 0] == plain[..., 1]).all() and (plain[..., 1] == plain[..., 2]).all()

    viewer.set_mask(show=True, opacity=1.0, style="outline")
    outlined = viewer.frame().astype(int)
    assert tuple(outlined[10, 10]) == (0, 255, 0)  # the square's edge, in lime
    assert (outlined[13, 13] == plain[13, 13]).all()  # its inside is untouched
    assert (outlined[~_mask()[5]] == plain[~_mask()[5]]).all()
    viewer.set_mask(style="fill")
    assert tuple(viewer.frame()[13, 13]) == (0, 255, 0)
    viewer.set_mask(opacity=0.0)
    assert (viewer.frame() == plain).all()

    viewer.set_mask(show=False)
    viewer.set_cam(show=True, opacity=0.65)
    with_cam = viewer.frame().astype(int)
    hot = _cam()[5] > 0
    assert (with_cam[~hot] == plain[~hot]).all()
    assert (np.abs(with_cam[hot] - plain[hot]).sum(axis=-1) > 30).all()
    assert np.ptp(with_cam[21, 21]) > 30  # coloured, not grey


def test_showing_an_overlay_that_was_not_given_is_refused():
    bare = SliceViewer(_volume())
    assert (bare.show_mask, bare.show_cam) == (False, False)
    with pytest.raises(ConfigError, match="no mask"):
        bare.set_mask(show=True)
    with pytest.raises(ConfigError, match="no Grad-CAM"):
        bare.set_cam(show=True)


def test_title_shows_the_slice_number_and_its_labels(viewer):
    assert viewer.title(4) == "slice 5/8 · subdural, any"
    assert viewer.title(0) == "slice 1/8 · no hemorrhage"
    assert SliceViewer(_volume(), name="049").title(2) == "049 · slice 3/8"


def test_labels_from_a_slice_table_or_a_mapping_give_the_same_titles(viewer):
    table = pd.DataFrame(_labels(), columns=list(LABELS))
    table["patient_id"] = "049"
    table["slice_number"] = np.arange(1, N + 1)
    shuffled = table.sample(frac=1.0, random_state=0)
    from_table = SliceViewer(_volume(), labels=shuffled)
    subtypes_only = {name: _labels()[:, i] for i, name in enumerate(LABELS) if name != "any"}
    from_mapping = SliceViewer(_volume(), labels=subtypes_only)
    for k in range(N):
        assert from_table.title(k) == from_mapping.title(k) == viewer.title(k)


# --- rendering ------------------------------------------------------------------------

def test_png_changes_with_the_slice_and_the_window(viewer):
    first = viewer.render_png(3)
    assert first.startswith(PNG_SIGNATURE)
    assert viewer.render_png(3) == first
    assert viewer.render_png(4) != first
    viewer.set_preset("bone")
    assert viewer.render_png(3) != first


def test_montage_has_evenly_spaced_slices_with_their_titles(viewer):
    fig = viewer.montage(n=4, ncols=2)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles == ["slice 1", "slice 3", "slice 6 · SDH", "slice 8"]
    assert len(SliceViewer(_volume()).montage(n=50).axes) == N  # never more panels than slices
    assert viewer.montage_png(n=4).startswith(PNG_SIGNATURE)
    with pytest.raises(ConfigError):
        viewer.montage(n=0)


def test_montage_and_slice_figure_read_at_notebook_width(viewer):
    from ichlib.viz.check import figure_problems, small_texts
    from ichlib.viz.figures import SYNTHETIC_NOTE

    viewer.note, viewer.name = SYNTHETIC_NOTE, "patient 022"
    montage = viewer.montage()  # 12 panels in rows of 6, as notebooks 01 and 02 show it
    assert figure_problems(montage) == []
    footer = montage.get_supxlabel()
    assert SYNTHETIC_NOTE in footer and "SDH subdural" in footer
    sizes = {t.get_text(): px for t, px in small_texts(montage, min_px=100)}
    assert sizes[footer] >= 10.5  # the footer was 8.9 px on screen at 8 pt: too small to read
    assert figure_problems(viewer.figure()) == []


# --- display ----------------------------------------------------------------------------

def _shell(allow_stdin: bool | None):
    content = {} if allow_stdin is None else {"code": "", "allow_stdin": allow_stdin}
    kernel = SimpleNamespace(get_parent=lambda channel=None: {"content": content})
    return SimpleNamespace(kernel=kernel)


def test_display_mode_rules():
    assert display_mode({}, shell=None)[0] == "static"  # plain Python
    assert display_mode({}, shell=SimpleNamespace())[0] == "static"  # terminal IPython
    mode, reason = display_mode({}, shell=_shell(allow_stdin=False))
    assert mode == "static" and "headless executor" in reason  # papermill, nbconvert
    assert display_mode({}, shell=_shell(allow_stdin=True))[0] == "interactive"  # JupyterLab
    assert display_mode({}, shell=_shell(allow_stdin=None))[0] == "interactive"
    assert display_mode({"ICHLIB_VIEWER": "static"}, shell=_shell(True))[0] == "static"
    assert display_mode({"ICHLIB_VIEWER": "interactive"}, shell=None)[0] == "interactive"
    with pytest.raises(ConfigError, match="ICHLIB_VIEWER"):
        display_mode({"ICHLIB_VIEWER": "yes"})


def test_explicit_interactive_flag_overrides_the_rules(monkeypatch):
    monkeypatch.setenv("ICHLIB_VIEWER", "interactive")
    assert SliceViewer(_volume(), interactive=False).display_mode()[0] == "static"
    assert SliceViewer(_volume()).display_mode()[0] == "interactive"


def test_show_displays_the_montage_or_the_widget(viewer, monkeypatch):
    from IPython import display as ipy_display

    shown = []
    monkeypatch.setattr(ipy_display, "display", lambda obj: shown.append(obj))
    viewer.show()  # interactive=False
    assert isinstance(shown[-1], ipy_display.Image)
    assert shown[-1].data == viewer.montage_png()
    viewer.interactive = True
    viewer.show()
    assert shown[-1] is viewer.widget()


def test_widget_controls_drive_the_state_and_the_image(viewer):
    pytest.importorskip("ipywidgets", reason="ipywidgets is part of the dev extra")
    viewer.widget()
    c = viewer._controls
    assert c.slice.value == viewer.slice_index + 1 == 6
    before = c.image.value
    assert before == viewer.render_png()
    c.slice.value = 2
    assert viewer.slice_index == 1 and c.image.value != before
    c.preset.value = "bone"
    assert (viewer.level, viewer.width) == WINDOWS["bone"] == (c.level.value, c.width.value)
    c.level.value = 500
    assert viewer.preset == "custom" == c.preset.value
    c.mask.value = False
    assert viewer.show_mask is False
    c.cam_opacity.value = 0.2
    assert viewer.cam_opacity == pytest.approx(0.2)
    viewer.set_slice(100)  # from code: the slider follows
    assert c.slice.value == N and c.image.value == viewer.render_png()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_papermill_run_gets_the_static_montage(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill", reason="papermill is part of the dev extra")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # the montage must not depend on the backend
    monkeypatch.delenv("ICHLIB_VIEWER", raising=False)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(
        "import numpy as np\nfrom ichlib.viz import SliceViewer\n"
        "hu = np.tile(np.linspace(-100, 100, 24 * 24, dtype=np.float32).reshape(24, 24), (6, 1, 1))\n"
        "SliceViewer(hu)")]
    nbformat.write(nb, tmp_path / "in.ipynb")
    papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"),
                               kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    outputs = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0].outputs
    kinds = [kind for out in outputs for kind in out.get("data", {})]
    assert "image/png" in kinds
    assert "application/vnd.jupyter.widget-view+json" not in kinds


# --- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    ({"mask": np.zeros((N, SIZE, SIZE + 1), bool)}, DataError, r"mask has shape \(8, 32, 33\)"),
    ({"cam": np.zeros((N - 1, SIZE, SIZE))}, DataError, r"cam has shape \(7, 32, 32\)"),
    ({"cam": np.full((N, SIZE, SIZE), np.nan)}, DataError, "cam has 8192 NaN"),
    ({"cam": np.full((N, SIZE, SIZE), 2.0)}, DataError, r"must lie in \[0, 1\]"),
    ({"mask": np.full((N, SIZE, SIZE), np.nan)}, DataError, "mask has 8192 NaN"),
    ({"labels": np.zeros((N, 5))}, DataError, r"labels must be \[8 slices, 6\]"),
    ({"labels": {"any": np.zeros(N)}}, DataError, "lack columns"),
    ({"window_preset": "lung"}, ConfigError, "unknown window preset"),
    ({"mask_style": "dots"}, ConfigError, "mask style"),
    ({"cam_opacity": 1.5}, ConfigError, r"opacity must be in \[0, 1\]"),
])
def test_bad_inputs_get_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        SliceViewer(_volume(), **kwargs)


def test_bad_volumes_get_clear_errors(tmp_path):
    hu = _volume().hu.copy()
    hu[2, 3, 4] = np.nan
    with pytest.raises(DataError, match="1 NaN or Inf voxels") as info:
        SliceViewer(Volume(hu=hu, spacing=(5.0, 0.5, 0.5), path=tmp_path / "scan.nii"))
    assert info.value.path == str(tmp_path / "scan.nii")  # the error names the file
    with pytest.raises(DataError, match=r"\[slices, H, W\], got shape \(32, 32\)"):
        SliceViewer(np.zeros((SIZE, SIZE)))
    with pytest.raises(DataError, match="label table holds several patients"):
        SliceViewer(_volume(), labels=pd.DataFrame({"patient_id": ["1", "2"]}))
