"""The PNG figures of a job: confusion matrix, search history, parameter importances, UA curves,
the paired comparison of modes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path) -> None:
    """Counts and row-normalised recall of the (summed) test confusion matrix."""
    recall = matrix / matrix.sum(1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
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
        title="test confusion (all folds)",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fold_panels(folds: list, title: str):
    """A row of panels, one per outer fold, sharing the y axis."""
    fig, axes = plt.subplots(
        1, len(folds), figsize=(1 + 3.2 * len(folds), 3.5), sharey=True, squeeze=False
    )
    for ax, fold in zip(axes[0], folds):
        ax.set_title(f"fold {fold} (test session {fold})", fontsize=9)
    fig.suptitle(title)
    return fig, axes[0]


def plot_search_history(trials: pd.DataFrame, metric: str, path: Path) -> None:
    """Per fold: each trial's best validation score in launch order, and the best so far."""
    folds = sorted(trials.fold.unique())
    fig, axes = _fold_panels(folds, "optimization history (one search per fold)")
    for ax, fold in zip(axes, folds):
        own = trials[trials.fold == fold]
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
        ax.set(xlabel="trial")
    axes[0].set(ylabel=metric)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_importances(importances: dict[str, float], path: Path) -> None:
    """fANOVA importances of the searched parameters (Optuna's evaluator)."""
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(importances)))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set(xlabel="importance (share of the variance of the score)", title="parameter importances")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(curves: dict[int, dict[str, pd.DataFrame]], metric: str, path: Path) -> None:
    """Per fold: the validation score per epoch of every trial (where ASHA cut the weak ones)."""
    fig, axes = _fold_panels(list(curves), f"{metric} per trial and epoch")
    for ax, trials in zip(axes, curves.values()):
        for trial, history in trials.items():
            ax.plot(history["epoch"], history[metric], marker="o", markersize=3, label=trial)
        ax.set(xlabel="epoch")
        if len(trials) <= 8:
            ax.legend(fontsize=6)
    axes[0].set(ylabel=metric)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_comparison(rows: pd.DataFrame, comparison: pd.DataFrame, path: Path) -> None:
    """Left: per fold, each mode's test UA (averaged over seeds), a mode joined to the baseline
    fold by fold. Right: each mode's mean paired UA difference with its 95 % interval."""
    per_fold = rows.groupby(["mode", "test_session"])["ua"].mean().unstack("mode") * 100
    ua = comparison[comparison.score == "ua"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), width_ratios=(2, 1))
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
    plt.close(fig)
