"""The PNG figures of a job: confusion matrix, search history, parameter importances, UA curves,
the paired comparison of modes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from turbo_ray.data.folds import FINAL

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(**layout) -> Figure:
    """A figure drawn only to a file: no pyplot state to close, no display. matplotlib is imported
    here, at a job's first plot, not by every process that imports this module (a trial's)."""
    from matplotlib.figure import Figure

    return Figure(**layout)


def plot_confusion(matrices: dict[str, np.ndarray], classes: list[str], path: Path) -> None:
    """Per mode, counts and row-normalised recall of its test confusion matrix (summed over its
    folds and seeds): a panel each, side by side."""
    fig = _figure(figsize=(0.5 + 4.2 * len(matrices), 4))
    for ax, (mode, matrix) in zip(
        fig.subplots(1, len(matrices), squeeze=False)[0], matrices.items()
    ):
        recall = matrix / matrix.sum(1, keepdims=True).clip(min=1)
        ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(
                j,
                i,
                f"{count}\n{recall[i, j]:.0%}",
                ha="center",
                va="center",
                color="white" if recall[i, j] > 0.5 else "black",
                fontsize=8,
            )
        ax.set(
            xticks=range(len(classes)),
            yticks=range(len(classes)),
            xticklabels=classes,
            yticklabels=classes,
            xlabel="predicted",
            ylabel="true",
            title=f"{mode}: test confusion (all folds)",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _search_panels(searches: list[tuple], title: str) -> tuple[Figure, dict]:
    """A panel per search (mode, seed, fold): a row per mode and seed, a column per outer fold,
    sharing the y axis. Returns the figure and each search's panel."""
    rows = sorted({(mode, seed) for mode, seed, _ in searches})
    folds = sorted({fold for *_, fold in searches})
    fig = _figure(figsize=(1 + 3.2 * len(folds), 0.5 + 3 * len(rows)))
    axes = fig.subplots(len(rows), len(folds), sharey=True, squeeze=False)
    panels = {}
    for mode, seed, fold in searches:
        ax = panels[mode, seed, fold] = axes[rows.index((mode, seed))][folds.index(fold)]
        where = (
            "final: all of the corpus" if fold == FINAL else f"fold {fold} (test session {fold})"
        )
        ax.set_title(f"{mode}, seed {seed}, {where}", fontsize=8)
    fig.suptitle(title)
    return fig, panels


def plot_search_history(trials: pd.DataFrame, metric: str, path: Path) -> None:
    """Per search: each trial's best validation score in launch order, and the best so far."""
    searches = trials.groupby(["mode", "seed", "fold"], sort=True)
    fig, panels = _search_panels(list(searches.groups), "optimization history (one search each)")
    for search, own in searches:
        ax = panels[search]
        x = np.arange(1, len(own) + 1)
        score = own[f"best_{metric}"].to_numpy(dtype=float)
        early = own["stopped_early"].to_numpy(dtype=bool)
        ax.scatter(x[~early], score[~early], label="ran to the end")
        ax.scatter(x[early], score[early], marker="x", label="stopped by ASHA")
        ax.step(
            x,
            np.fmax.accumulate(np.nan_to_num(score, nan=-np.inf)),
            where="post",
            color="k",
            label="best so far",
        )
        ax.set(xlabel="trial", ylabel=metric)
    next(iter(panels.values())).legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_importances(importances: dict[str, dict[str, float]], path: Path) -> None:
    """Per mode, fANOVA importances of the parameters its searches tuned (Optuna's evaluator)."""
    longest = max(len(values) for values in importances.values())
    fig = _figure(figsize=(6 * len(importances), 0.8 + 0.4 * longest))
    axes = fig.subplots(1, len(importances), squeeze=False)
    for ax, (mode, values) in zip(axes[0], importances.items()):
        names = list(values)[::-1]
        ax.barh(names, [values[n] for n in names])
        ax.set(xlabel="importance (share of the variance of the score)", title=mode)
    fig.suptitle("parameter importances")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_curves(
    curves: dict[tuple, dict[str, pd.DataFrame]],
    selected: dict[tuple, tuple[str, int]],
    metric: str,
    path: Path,
) -> Figure:
    """Per search (mode, seed, fold): the validation score per epoch of every trial (where ASHA
    cut the weak ones), and the (trial, epoch) the search selected, starred. Returns the figure
    (drawn to `path`)."""
    from matplotlib.ticker import MaxNLocator

    fig, panels = _search_panels(list(curves), f"{metric} per trial and epoch")
    for search, trials in curves.items():
        ax = panels[search]
        for trial, history in trials.items():
            ax.plot(history["epoch"], history[metric], marker="o", markersize=3, label=trial)
        if search in selected:
            trial, epoch = selected[search]
            history = trials[trial].set_index("epoch")
            ax.scatter(
                [epoch],
                [history.loc[epoch, metric]],
                marker="*",
                s=160,
                color="k",
                zorder=3,
                label=f"selected: {trial}, epoch {epoch}",
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
        ax.set(xlabel="epoch", ylabel=metric)
        if len(trials) <= 8:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def plot_comparison(rows: pd.DataFrame, comparison: pd.DataFrame, path: Path) -> None:
    """Left: per fold, each mode's test UA (averaged over seeds), a mode joined to the baseline
    fold by fold. Right: each mode's mean paired UA difference with its 95 % interval."""
    per_fold = rows.groupby(["mode", "test_session"])["ua"].mean().unstack("mode") * 100
    ua = comparison[comparison.score == "ua"]
    fig = _figure(figsize=(9, 3.8))
    left, right = fig.subplots(1, 2, width_ratios=(2, 1))
    folds = per_fold.index.to_numpy()
    for fold in folds:  # the pairs: each mode beside the baseline on the same fold
        left.plot([fold] * len(per_fold.columns), per_fold.loc[fold], color="0.8", zorder=1)
    for mode in per_fold.columns:
        left.scatter(folds, per_fold[mode], label=mode, zorder=2)
    left.set(xticks=folds, xlabel="test session (fold)", ylabel="test UA (%)")
    left.legend(fontsize=8)
    low, high = ua.difference - ua.ci_low, ua.ci_high - ua.difference
    right.errorbar(range(len(ua)), ua.difference * 100, yerr=[low * 100, high * 100], fmt="o")
    right.axhline(0, color="0.5", linewidth=0.8)
    right.set(
        xticks=range(len(ua)),
        xticklabels=[f"{m}\n- baseline" for m in ua["mode"]],
        ylabel="UA difference (points, 95 % CI)",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
