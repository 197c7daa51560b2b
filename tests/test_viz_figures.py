import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ichlib.viz.check import figure_problems, texts_over_axes  # noqa: E402
from ichlib.viz.figures import (  # noqa: E402
    SYNTHETIC_NOTE,
    abbreviation_key,
    montage,
    save_figure,
    show_slice,
    slice_title,
)


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


def test_montage_rows_leave_room_for_their_titles():
    """Notebook 01's heads: the second row's titles were hidden behind the images above."""
    images = [np.random.default_rng(i).random((64, 64)) for i in range(8)]
    titles = [f"patient {i:03d}\nslice 25 of 44" for i in range(8)]
    fig = montage(images, titles, ncols=4, size=2.6, suptitle="eight heads, brain window",
                  footer=SYNTHETIC_NOTE)
    assert texts_over_axes(fig) == []
    assert figure_problems(fig) == []
    assert fig.get_supxlabel() == SYNTHETIC_NOTE
    plt.close(fig)


def test_sampled_slice_montage_titles_are_whole_and_read():
    """Notebook 03's sampled slices (two rows of 8) and notebook 06's series (one row of 8)."""
    labels = np.zeros((16, 6), dtype=int)
    labels[10, [0, 4]] = 1          # epidural
    labels[11, [0, 3, 4]] = 1       # subarachnoid and epidural
    titles = [slice_title(k + 1, labels[k]) for k in range(16)]
    assert titles[10] == "#11 EDH" and titles[11] == "#12 SAH+EDH" and titles[0] == "#1 no blood"
    footer = abbreviation_key() + "\n" + SYNTHETIC_NOTE
    for n in (16, 8):
        fig = montage([np.random.default_rng(i).random((32, 32)) for i in range(n)], titles[:n],
                      ncols=8, suptitle="patient 022: the sampled slices (brain channel)", footer=footer)
        assert figure_problems(fig) == []
        assert [ax.get_title() for ax in fig.axes[:n]] == titles[:n]
        plt.close(fig)
    assert abbreviation_key(("epidural",)) == "EDH epidural"


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
    assert "SYNTHETIC" in fig.get_suptitle() + fig.get_supxlabel()
    assert figure_problems(fig) == []
    plt.close(fig)
