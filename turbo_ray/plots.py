"""The PNG figures of a job: confusion matrix, search history, parameter importances, UA curves."""
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
        ax.text(j, i, f"{count}\n{recall[i, j]:.0%}", ha="center", va="center",
                color="white" if recall[i, j] > 0.5 else "black", fontsize=8)
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title="test confusion (all folds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_search_history(trials: pd.DataFrame, metric: str, path: Path) -> None:
    """Each trial's best validation score in launch order, and the best so far."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(1, len(trials) + 1)
    score = trials[f"best_{metric}"].to_numpy(dtype=float)
    early = trials["stopped_early"].to_numpy(dtype=bool)
    ax.scatter(x[~early], score[~early], label="ran to the end")
    ax.scatter(x[early], score[early], marker="x", label="stopped by ASHA")
    ax.step(x, np.fmax.accumulate(np.nan_to_num(score, nan=-np.inf)), where="post", color="k", label="best so far")
    ax.set(xlabel="trial", ylabel=metric, title="optimization history")
    ax.legend(fontsize=8)
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


def plot_curves(curves: dict[str, pd.DataFrame], metric: str, path: Path) -> None:
    """Validation score per epoch of every trial: where ASHA cut the weak ones."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for trial, history in curves.items():
        ax.plot(history["epoch"], history[metric], marker="o", markersize=3, label=trial)
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per trial and epoch")
    if len(curves) <= 12:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
