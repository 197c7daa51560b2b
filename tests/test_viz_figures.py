import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ichlib.viz.figures import montage, save_figure, show_slice  # noqa: E402


def test_montage_grid_and_outline(tmp_path):
    images = [np.random.default_rng(i).random((16, 16)) for i in range(5)]
    masks = [None] * 4 + [np.pad(np.ones((4, 4), bool), 6)]
    fig = montage(images, [f"s{i}" for i in range(5)], masks, ncols=3)
    axes = fig.get_axes()
    assert len(axes) == 6  # 2 rows x 3 columns, the last one blank
    assert axes[4].get_title() == "s4" and len(axes[4].collections) > 0  # the contour
    assert len(axes[0].collections) == 0
    path = save_figure(fig, tmp_path / "figs", "m")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plt.close(fig)


def test_show_slice_without_mask_draws_no_contour():
    fig, ax = plt.subplots()
    show_slice(ax, np.zeros((8, 8)), np.zeros((8, 8), bool), "t")
    assert ax.get_title() == "t" and len(ax.collections) == 0
    plt.close(fig)


def test_the_phantom_gallery_shows_mimics_and_blood_ages():
    from ichlib.viz.phantom import plot_phantom_findings

    fig = plot_phantom_findings(size=64, n_slices=12)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 8 and "chronic subdural" in " ".join(titles) and "pineal" in " ".join(titles)
    assert "SYNTHETIC" in fig._suptitle.get_text()
    plt.close(fig)
