import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ichlib.viz.check import figure_problems
from ichlib.viz.training import (
    confusion_counts,
    plot_confusion_matrices,
    plot_history,
    plot_label_aucs,
    plot_roc_curves,
)


def test_confusion_counts_by_hand():
    y = np.zeros((4, 6))
    y[:2, 0] = 1
    p = np.zeros((4, 6))
    p[:, 0] = [0.9, 0.2, 0.7, 0.1]
    counts = confusion_counts(y, p, {lab: 0.5 for lab in ["any", "intraparenchymal", "intraventricular",
                                                            "subarachnoid", "epidural", "subdural"]})
    assert counts.loc["any"].to_dict() == {"TP": 1, "FP": 1, "FN": 1, "TN": 1}
    assert counts.loc["subdural"].to_dict() == {"TP": 0, "FP": 0, "FN": 0, "TN": 4}
    fig = plot_confusion_matrices(counts, "note")
    assert len(fig.axes) == 6 and fig.axes[0].texts[3].get_text() == "1"
    assert figure_problems(fig) == []     # readable at JupyterLab's size: no tiny or overlapping text
    plt.close(fig)


def test_roc_panels_handle_one_class_labels():
    rng = np.random.default_rng(0)
    y = np.zeros((10, 6))
    y[:5, 0] = 1
    fig = plot_roc_curves(y, {"model": rng.random((10, 6)), "baseline": rng.random((10, 6))})
    assert len(fig.axes) == 6
    assert len(fig.axes[0].lines) == 3  # chance line + 2 models
    assert "one class" in fig.axes[1].texts[0].get_text()
    # the legend sits beside the panels: it overlaps no axes and no axis label
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert not legend.overlaps(ax.get_window_extent(renderer))
        for text in (ax.xaxis.label, ax.yaxis.label):
            assert not text.get_text() or not legend.overlaps(text.get_window_extent(renderer))
    assert [ax.get_xlabel() for ax in fig.axes] == ["", "", "", "1 - specificity", "1 - specificity", "1 - specificity"]
    assert figure_problems(fig) == []
    plt.close(fig)


def test_history_plot_has_a_line_per_run_and_split():
    h = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "val_mean_auc": [0.5, 0.6]})
    fig = plot_history({"λ=0.5": h, "λ=0": h})
    assert len(fig.axes[0].lines) == 4 and len(fig.axes[1].lines) == 3  # 2 runs + chance
    plt.close(fig)


def test_history_without_patient_auc_says_so_and_warns_nothing():
    import warnings

    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [0.5, 0.4], "val_loss": [0.6, 0.5],
                            "val_mean_auc": [None, None]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plot_history({"two-stage": history})
    assert "no patient-level validation AUC" in fig.axes[1].texts[0].get_text()
    assert [line.get_label() for line in fig.axes[0].lines] == ["two-stage train", "two-stage val"]
    plt.close(fig)


def test_label_aucs_draw_each_model_with_its_interval_and_mark_missing_labels():
    labels = ["any", "intraparenchymal", "intraventricular", "subarachnoid", "epidural", "subdural"]
    rows = []
    for model, shift in (("two-stage", 0.0), ("baseline", -0.1)):
        for j, label in enumerate(labels):
            auc = np.nan if label == "epidural" else 0.6 + 0.05 * j + shift
            rows.append({"model": model, "label": label, "auc": auc, "auc_ci_low": auc - 0.1,
                         "auc_ci_high": auc + 0.05})
    fig = plot_label_aucs(pd.DataFrame(rows), "SYNTHETIC")
    ax = fig.axes[0]
    bars = [c for c in ax.containers]
    assert len(bars) == 2  # one errorbar series per model
    points = bars[0].lines[0].get_ydata()
    assert np.allclose(points[:4], [0.6, 0.65, 0.7, 0.75]) and np.isnan(points[4])
    low_caps = bars[0].lines[1][0].get_ydata()
    assert np.allclose(low_caps[:4], [0.5, 0.55, 0.6, 0.65])
    assert sum(t.get_text() == "n/a" for t in ax.texts) == 2  # epidural, for both models
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["two-stage", "baseline"]
    assert figure_problems(fig) == []   # the legend beside the data, every text readable
    plt.close(fig)
