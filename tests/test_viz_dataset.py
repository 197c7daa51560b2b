"""The data notebooks' figures read at JupyterLab's width (ichlib.viz.check finds no problem),
show every label of the data or say it is absent, and count on integer axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ichlib.explore import BRAIN, ScanSlice, contrast_per_window, hu_samples, lesion_slice  # noqa: E402
from ichlib.io.ctich import read_ct_ich  # noqa: E402
from ichlib.io.tables import cooccurrence, label_counts  # noqa: E402
from ichlib.labels import LABELS, SUBTYPES  # noqa: E402
from ichlib.viz.check import figure_problems, fractional_ticks  # noqa: E402
from ichlib.viz.dataset import (  # noqa: E402
    plot_composite,
    plot_contrast,
    plot_cooccurrence,
    plot_hu_per_tissue,
    plot_label_prevalence,
    plot_repeats,
    plot_sampling,
    plot_scan_lengths,
    plot_subtype_examples,
    plot_windows,
)
from ichlib.viz.figures import SYNTHETIC_NOTE  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def data(small_ct_ich):
    return read_ct_ich(small_ct_ich)


def _texts(fig: plt.Figure) -> str:
    parts = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    return "\n".join(parts)


def test_label_and_count_figures_read(data):
    for fig in (plot_label_prevalence(label_counts(data), SYNTHETIC_NOTE),
                plot_cooccurrence(cooccurrence(data), "patients", SYNTHETIC_NOTE)):
        assert figure_problems(fig) == []
        assert SYNTHETIC_NOTE in _texts(fig)
    fig = plot_label_prevalence(label_counts(data))
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == list(LABELS)  # every label, zero-count ones too


def test_scan_lengths_count_patients_on_integer_ticks(data):
    fig = plot_scan_lengths(data.patients, SYNTHETIC_NOTE)
    assert figure_problems(fig) == []
    assert fractional_ticks(fig.axes[0], "y") == [] and fractional_ticks(fig.axes[0], "x") == []
    assert "3 to 8 slices" in fig.axes[0].get_title()


def test_hu_violins_show_every_subtype_or_say_it_is_absent(data):
    samples = hu_samples(data, n_scans=2, n_voxels=50)
    fig = plot_hu_per_tissue(samples, SYNTHETIC_NOTE)
    assert figure_problems(fig) == []
    ticks = [t.get_text().split("\n")[0] for t in fig.axes[0].get_xticklabels()]
    assert ticks == [BRAIN, *SUBTYPES]
    absent = [t for t in fig.axes[0].texts if "no slice shows" in t.get_text()]
    assert sorted(round(t.get_position()[0]) for t in absent) == [2, 3]  # IVH, SAH


def test_hu_violins_count_voxels_beyond_the_range():
    rng = np.random.default_rng(0)
    samples = pd.DataFrame({
        "tissue": [BRAIN] * 100 + ["epidural"] * 100,
        "HU": np.r_[rng.normal(30, 5, 100), np.r_[np.full(90, 70.0), np.full(10, 600.0)]],
        "patient_id": ["001"] * 200})
    fig = plot_hu_per_tissue(samples)
    labels = {t.get_text().split("\n")[0]: t.get_text() for t in fig.axes[0].get_xticklabels()}
    assert "10% > 150 HU" in labels["epidural"] and "1 scan" in labels["epidural"]
    assert "%" not in labels[BRAIN]
    assert figure_problems(fig) == []


def test_subtype_examples_say_which_subtype_has_no_slice(data):
    examples = {s: lesion_slice(data, s) for s in SUBTYPES}
    fig = plot_subtype_examples(examples, SYNTHETIC_NOTE)
    assert figure_problems(fig) == []
    said = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert said == ["intraventricular:\nno slice with\nthis label", "subarachnoid:\nno slice with\nthis label"]
    assert sum(len(ax.images) for ax in fig.axes) == 3


def test_windows_and_composite_read(data):
    found = lesion_slice(data, "epidural")
    fig = plot_windows(found.hu, found.mask, "patient 050, slice 3", SYNTHETIC_NOTE)
    assert figure_problems(fig) == []
    assert [ax.get_title() for ax in fig.axes if ax.images][1] == "brain: centre 40, width 80"
    assert "red: mask outline" in fig.get_suptitle()
    fig = plot_composite(found.hu, note=SYNTHETIC_NOTE)
    assert figure_problems(fig) == []
    assert fig.axes[3].images[0].get_array().shape == (32, 32, 3)
    with pytest.raises(ValueError, match="3 windows"):
        plot_composite(found.hu, ("brain", "bone"))


def test_contrast_bars_read(data):
    fig = plot_contrast(contrast_per_window(data), SYNTHETIC_NOTE)
    assert figure_problems(fig) == []
    assert "2 patients" in fig.get_suptitle()
    assert [ax.get_ylabel() for ax in fig.axes] == ["contrast", "cnr"]


def test_sampling_legend_names_subtypes_and_those_no_sampled_slice_shows():
    hu = np.full((20, 32, 32), 30.0, dtype=np.float32)
    labels = np.zeros((20, 6), dtype=int)
    labels[[4, 10], 0] = 1
    labels[4, LABELS.index("epidural")] = 1
    labels[10, LABELS.index("subdural")] = 1
    fig = plot_sampling(hu, labels, {"uniform": np.array([0, 4, 9, 14, 19])}, "scan", SYNTHETIC_NOTE)
    assert figure_problems(fig) == []
    names = [t.get_text() for t in fig.legends[0].get_texts()]
    assert names == ["no blood", "epidural", "subdural\n(on no sampled slice)"]
    colours = [line.get_color() for line in fig.axes[0].lines]
    assert colours.count("yellow") == 4 and "tab:green" in colours


def test_repeats_count_on_integer_ticks():
    fig = plot_repeats(np.array([0, 0, 1, 1, 2, 2, 2]), 3, SYNTHETIC_NOTE)
    assert figure_problems(fig) == []
    assert fractional_ticks(fig.axes[0], "y") == []
    assert [p.get_height() for p in fig.axes[0].patches] == [2, 2, 3]
    assert "2 to 3 times" in fig.axes[0].get_title()


def test_a_scan_slice_without_mask_is_drawn_without_outline():
    empty = ScanSlice("001", 1, 1, np.zeros((8, 8)), np.zeros((8, 8), bool), "")
    fig = plot_subtype_examples({"epidural": empty})
    assert fig.axes[3].images and not fig.axes[3].collections
