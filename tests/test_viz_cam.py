"""Grad-CAM figures (the report that writes them is tested in test_explain_report.py)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from ichlib.explain.cam import ScanCAM
from ichlib.labels import LABELS  # noqa: E402
from ichlib.viz.cam import (
    plot_cam_gallery,
    plot_cam_montage,
    plot_cam_slice,
    plot_localization,
    plot_slice_importance,
    save_cam_montage,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def fake_result(s: int = 8, size: int = 24) -> tuple[torch.Tensor, ScanCAM, np.ndarray]:
    """A hand-made scan: a blob on slices 3-4 with maps that peak there."""
    yy, xx = np.mgrid[:size, :size]
    blob = np.hypot(yy - 8, xx - 15) < 3
    x = torch.full((s, 1, size, size), 0.4)
    masks = np.zeros((s, size, size), bool)
    masks[3:5] = blob
    x[3:5, 0][torch.from_numpy(masks[3:5])] = 0.95
    bump = np.exp(-((yy - 8) ** 2 + (xx - 15) ** 2) / 18.0).astype(np.float32)
    weight = np.array([0.05, 0.1, 0.3, 1.0, 0.8, 0.2, 0.1, 0.05], np.float32)[:s]
    maps = weight[:, None, None] * bump
    result = ScanCAM(maps=maps, importance=maps.mean(axis=(1, 2)), raw=maps[:, ::4, ::4],
                     label="subdural", probability=0.87,
                     probabilities=np.linspace(0.1, 0.9, 6).astype(np.float32),
                     slice_indices=np.arange(s) * 3)
    return x, result, masks


def test_plot_cam_slice_three_panels_and_png(tmp_path):
    x, result, masks = fake_result()
    path = tmp_path / "slice.png"
    fig = plot_cam_slice(x[3, 0], result.maps[3], masks[3], title="slice 10", path=path)
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert titles[0] == "windowed slice" and titles[1] == "Grad-CAM" and "mask" in titles[2]
    assert path.read_bytes()[:8] == PNG_MAGIC
    plot_cam_slice(x[0].numpy(), result.maps[0])            # [1, H, W] image, no mask
    with pytest.raises(ValueError):
        plot_cam_slice(x[:2, 0], result.maps[0])


def test_gallery_one_panel_per_map_with_its_maximum_marked():
    x, result, masks = fake_result()
    shifted = np.roll(result.maps[3], 6, axis=1)
    maps = {"gradcam @ layer4": result.maps[3], "layercam @ layer3": shifted, "hirescam @ layer4": result.maps[3] * 0}
    fig = plot_cam_gallery(x[3, 0], maps, masks[3], columns=2, title="SYNTHETIC", per_panel=False)
    panels = [ax for ax in fig.axes if ax.get_title() in maps]
    assert [ax.get_title() for ax in panels] == list(maps)
    crosses = [ax.lines[0].get_xydata()[0].tolist() if ax.lines else None for ax in panels]
    assert crosses[0] == [15.0, 8.0] and crosses[1] == [21.0, 8.0]  # the maximum of each map (col, row)
    assert crosses[2] is None  # a blank map has no maximum to mark
    assert sum(not ax.axison for ax in fig.axes[:4]) == 4 and len(fig.axes) == 5  # 3 panels + 1 empty + colorbar
    with pytest.raises(ValueError):
        plot_cam_gallery(x[3, 0], {})


def test_gallery_scales_a_faint_map_to_its_panel_so_it_shows():
    x, result, masks = fake_result()
    faint = result.maps[3] / result.maps[3].max() * 0.05      # 5% of a scan maximum elsewhere
    fig = plot_cam_gallery(x[3, 0], {"faint": faint}, masks[3])
    panel = fig.axes[0]
    heat = panel.images[1].get_array()
    assert float(np.max(heat)) == pytest.approx(1.0)           # drawn at full strength
    assert panel.get_title() == "faint\n(peak 0.05)"            # and the title says how faint it was
    as_is = plot_cam_gallery(x[3, 0], {"faint": faint}, masks[3], per_panel=False).axes[0]
    assert float(np.max(as_is.images[1].get_array())) == pytest.approx(0.05)


def test_montage_shows_the_most_important_slices_first(tmp_path):
    x, result, masks = fake_result()
    path = tmp_path / "montage.png"
    fig = plot_cam_montage(x, result, top_k=4, masks=masks, slice_labels=masks.any(axis=(1, 2)),
                           path=path)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("slice")]
    # importance order: positions 3, 4, 2, 5 -> SliceNumber = 3 * pos + 1
    assert [t.split()[1] for t in titles] == ["10", "13", "7", "16"]
    assert titles[0].endswith("importance 100%")
    assert "subdural" in fig._suptitle.get_text() and "0.87" in fig._suptitle.get_text()
    assert path.read_bytes()[:8] == PNG_MAGIC
    small = plot_cam_montage(x, result, top_k=20, show_importance=False, title="all")
    assert sum(ax.get_title().startswith("slice") for ax in small.axes) == 8
    with pytest.raises(ValueError):
        plot_cam_montage(x[:3], result)


def test_importance_plot_shades_the_labelled_slices(tmp_path):
    _, result, masks = fake_result()
    labels = np.zeros((8, len(LABELS)), np.float32)
    labels[3:5, LABELS.index("subdural")] = 1
    labels[7, LABELS.index("epidural")] = 1                  # another label: not shaded
    fig = plot_slice_importance(result, labels, path=tmp_path / "imp.png")
    ax = fig.axes[0]
    shaded = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(shaded) == 1                                   # one run: slices 3-4
    x0 = shaded[0].get_x()
    x1 = x0 + shaded[0].get_width()                           # half-way to the neighbours
    assert x0 == pytest.approx(10 - 1.5) and x1 == pytest.approx(13 + 1.5)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), result.importance)
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), result.slice_indices + 1)
    assert (tmp_path / "imp.png").exists()
    plot_slice_importance(result)                             # no labels at all
    with pytest.raises(ValueError):
        plot_slice_importance(result, labels[:5])


def test_plot_localization_draws_one_bar_per_method_and_score_with_intervals(tmp_path):
    import pandas as pd

    table = pd.DataFrame({"method": ["trained", "chance"], "label": ["any", "any"],
                          "n_patients": [4, 4], "n_slices": [9, 9],
                          "pointing_0mm": [0.5, 0.25], "pointing_0mm_ci_low": [0.4, 0.1],
                          "pointing_0mm_ci_high": [0.6, 0.3], "energy": [0.3, 0.1],
                          "energy_ci_low": [0.2, 0.05], "energy_ci_high": [0.35, 0.2]})
    other_label = table.assign(label="subdural", pointing_0mm=0.9)
    fig = plot_localization(pd.concat([table, other_label]), path=tmp_path / "loc.png")
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches if isinstance(p, Rectangle))
    assert heights == sorted([0.5, 0.25, 0.3, 0.1])               # the 'any' rows only
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["trained", "chance"]
    assert "4 patients, 9 slices" in ax.get_title()
    assert (tmp_path / "loc.png").read_bytes()[:8] == PNG_MAGIC
    from ichlib.viz.check import figure_problems

    long = plot_localization(table, title="test split, 'any': hirescam @ layer2 against the references · "
                                          "SYNTHETIC phantom data - not patient data, no clinical meaning")
    assert figure_problems(long) == []     # legend beside the bars, the title wrapped, not cut


def test_plot_localization_says_so_when_nothing_was_scored(tmp_path):
    import pandas as pd

    from ichlib.explain.localization import localization_table

    table = localization_table(pd.DataFrame(columns=["method", "label", "patient_id"]))
    fig = plot_localization(table, path=tmp_path / "loc.png")
    ax = fig.axes[0]
    assert not [p for p in ax.patches if isinstance(p, Rectangle)]
    assert "nothing to localise" in " ".join(t.get_text() for t in ax.texts)
    assert "0 patients" in ax.get_title()
    assert (tmp_path / "loc.png").exists()


def test_save_cam_montage_writes_the_png_and_closes_its_figure(tmp_path):
    from ichlib.explain.report import ScanExplanation

    maps = np.zeros((3, 16, 16), np.float32)
    maps[1, 4:8, 4:8] = 1.0
    cam = ScanCAM(maps=maps, importance=maps.mean(axis=(1, 2)), raw=maps[:, ::4, ::4],
                  label="any", probability=0.9, probabilities=np.full(6, 0.5, np.float32),
                  slice_indices=np.array([2, 5, 8]))
    explained = ScanExplanation(volume=None, x=torch.rand(3, 1, 16, 16), cam=cam)
    open_before = plt.get_fignums()
    path = save_cam_montage(explained, tmp_path / "m.png", title="a title", top_k=2)
    assert path == tmp_path / "m.png" and path.read_bytes()[:8] == PNG_MAGIC
    assert plt.get_fignums() == open_before


def test_long_titles_are_wrapped_to_the_figure_not_cut_off():
    from ichlib.viz.check import figure_problems

    x, result, masks = fake_result()
    title = ("test patient 055, slice 21: hirescam @ layer2 for 'any' (p = 0.93) · SYNTHETIC phantom "
             "data - not patient data, no clinical meaning")
    for fig in (plot_cam_slice(x[3, 0].numpy(), result.maps[3], masks[3], title=title),
                plot_slice_importance(result, title=title),
                plot_cam_montage(x, result, top_k=4, masks=masks, title=title)):
        assert figure_problems(fig) == []
        shown = [t.get_text() for t in fig.findobj(matplotlib.text.Text) if "SYNTHETIC" in t.get_text()]
        assert len(shown) == 1 and shown[0].replace("\n", " ") == title and "\n" in shown[0]
        plt.close(fig)
