"""ichlib.viz.check finds each problem in a figure built to have it, and nothing in one without."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ichlib.viz.check import (  # noqa: E402
    clipped_texts,
    display_scale,
    drawn_texts,
    empty_images,
    figure_problems,
    fractional_ticks,
    legends_over_data,
    overlapping_texts,
    small_texts,
    texts_over_axes,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _clean() -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    ax.plot([1, 2, 3], [1, 4, 9], label="squares")
    ax.set(title="a clean figure", xlabel="x", ylabel="y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def test_a_clean_figure_has_no_problem():
    assert figure_problems(_clean()) == []


def test_drawn_texts_leave_out_hidden_axes_and_empty_strings():
    fig, (a, b) = plt.subplots(1, 2)
    a.set_title("shown")
    b.set_axis_off()
    b.set_xlabel("hidden with its axis")
    a.text(0.5, 0.5, "")
    texts = [t.get_text() for t in drawn_texts(fig)]
    assert "shown" in texts and "hidden with its axis" not in texts and "" not in texts


def test_overlapping_texts_are_found_and_rotation_is_respected():
    fig, ax = plt.subplots(figsize=(4, 3), layout="constrained")
    ax.text(0.2, 0.5, "first label here")
    ax.text(0.25, 0.5, "second label")
    pairs = overlapping_texts(fig)
    assert [(a.get_text(), b.get_text()) for a, b in pairs] == [("first label here", "second label")]

    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")  # long labels turned 30 degrees
    ax.bar(range(5), range(5))
    ax.set_xticks(range(5), ["intraparenchymal"] * 5, rotation=30, ha="right", rotation_mode="anchor")
    assert overlapping_texts(fig) == []  # their upright boxes overlap, the turned ones do not
    ax.set_xticks(range(5), ["intraparenchymal"] * 5, rotation=0)
    assert len(overlapping_texts(fig)) >= 4


def test_a_title_under_the_image_above_is_found():
    # the old montage: square images in a figure too short for the second row's titles
    fig, axes = plt.subplots(2, 4, figsize=(10.4, 5.6))
    for i, ax in enumerate(axes.flat):
        ax.imshow(np.random.default_rng(i).random((32, 32)))
        ax.set_title(f"patient {i}, slice 25/44")
        ax.set_axis_off()
    fig.suptitle("brain window")
    fig.tight_layout()
    found = texts_over_axes(fig)
    assert sorted({t.get_text() for t, _ in found}) == [f"patient {i}, slice 25/44" for i in range(4, 8)]
    assert all(ax in axes[0] for _, ax in found)
    assert any("lies on another panel" in line for line in figure_problems(fig))


def test_twin_axes_do_not_count_as_another_panel():
    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    ax.plot([0, 1], [0, 1])
    twin = ax.twinx()
    twin.plot([0, 1], [1, 0], color="tab:orange")
    twin.set_ylabel("other quantity")
    assert texts_over_axes(fig) == []


def test_text_over_the_figure_edge_is_clipped():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.text(0.9, 0.5, "runs off the right edge", transform=fig.transFigure)
    assert [t.get_text() for t in clipped_texts(fig)] == ["runs off the right edge"]
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.text(0.95, 0.5, "cut by the axes", clip_on=True)
    assert [t.get_text() for t in clipped_texts(fig)] == ["cut by the axes"]


def test_small_text_depends_on_the_shown_width():
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100, layout="constrained")
    ax.set_title("eight points", fontsize=8)  # 11.1 px at full size
    assert display_scale(fig, 1000) == 1.0
    assert small_texts(fig, display_width_px=1000) == []
    wide, ax = plt.subplots(figsize=(20, 3), dpi=100, layout="constrained")
    ax.set_title("eight points", fontsize=8)  # shrunk to about half: 5.6 px
    assert 0.45 < display_scale(wide, 1000) < 0.55
    sizes = {t.get_text(): px for t, px in small_texts(wide, display_width_px=1000)}
    assert 5.0 < sizes["eight points"] < 6.2


def test_a_legend_over_the_data_is_found_and_one_outside_is_not():
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    ax.plot(np.linspace(0, 1, 50), np.linspace(0, 1, 50), label="rising line")
    ax.legend(loc="upper left", bbox_to_anchor=(0.05, 0.95))  # a line runs through... not here
    assert legends_over_data(fig) == []
    ax.legend(loc="center")  # the diagonal crosses the centre
    assert len(legends_over_data(fig)) == 1
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    ax.bar(range(4), [4, 4, 4, 4], label="bars")
    ax.legend(loc="lower left")
    assert len(legends_over_data(fig)) == 1
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    ax.scatter([0.5], [0.5], label="one point")
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="center")
    assert len(legends_over_data(fig)) == 1


def test_empty_heatmaps_are_found():
    fig, axes = plt.subplots(1, 5, figsize=(10, 2.5), layout="constrained")
    axes[0].imshow(np.zeros((8, 8)), cmap="turbo", vmin=0, vmax=1)          # all 0
    axes[1].imshow(np.random.default_rng(0).random((8, 8)), alpha=0.0)       # transparent
    rgba = np.ones((8, 8, 4))
    rgba[..., 3] = 0
    axes[2].imshow(rgba)                                                     # zero alpha channel
    axes[3].imshow(np.full((8, 8), np.nan))                                  # nothing finite
    axes[4].imshow(np.pad(np.ones((2, 2)), 3), cmap="turbo")                 # a small hot spot
    assert [a.axes for a in empty_images(fig)] == list(axes[:4])
    fig, ax = plt.subplots()
    ax.pcolormesh(np.zeros((4, 4)))
    assert len(empty_images(fig)) == 1


def test_fractional_ticks_on_a_count_axis():
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(np.arange(1, 9), np.full(8, 2))
    assert 0.5 in fractional_ticks(ax, "y")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    assert fractional_ticks(ax, "y") == []
    assert fractional_ticks(ax, "x") == []
