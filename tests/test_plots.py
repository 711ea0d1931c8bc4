"""The figures say what the tables say: whole epochs, the selected (trial, epoch) marked, a
confusion panel per mode."""

import numpy as np
import pandas as pd
from matplotlib.image import imread

from turbo_ray.plots import plot_confusion, plot_curves
from turbo_ray.trials import SearchKey


def test_the_curves_are_in_whole_epochs_and_star_each_searchs_selected_epoch(tmp_path):
    key = SearchKey("turbo", 0, 1)
    curves = {
        "a": pd.DataFrame({"epoch": [1, 2, 3], "val_ua": [0.5, 0.6, 0.55]}),
        "b": pd.DataFrame({"epoch": [1], "val_ua": [0.4]}),  # stopped by ASHA
    }
    fig = plot_curves({key: curves}, {key: ("a", 2)}, "val_ua", tmp_path / "curves.png")
    (ax,) = fig.axes
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)  # no epoch 1.5
    (star,) = [c for c in ax.collections if "selected" in c.get_label()]
    assert star.get_offsets().tolist() == [[2.0, 0.6]] and "a, epoch 2" in star.get_label()
    assert (tmp_path / "curves.png").is_file()


def test_the_confusion_figure_has_a_panel_per_mode(tmp_path):
    path = tmp_path / "confusion.png"
    one = np.array([[3, 1], [0, 4]])
    plot_confusion({"baseline": one, "turbo": 2 * one}, ["a", "b"], path)
    height, width = imread(path).shape[:2]
    assert width > 1.5 * height
