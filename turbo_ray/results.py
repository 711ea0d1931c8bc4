"""Result tables and files: one row per tested fold (and mode and seed), their mean and std, the
printed tables and results.csv / results.json / confusion.png; and a search's own files
(trials.csv, each search's selected config, the search's plots).

    print(format_table(rows, "Nested leave-one-group-out …"))
    write_results(rows, paths, classes, cfg, {"protocol": "nested-loso"})
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import ray.tune
import yaml

from turbo_ray.checkpoints import selected_epoch
from turbo_ray.config import Config
from turbo_ray.data.folds import FINAL
from turbo_ray.formatting import short
from turbo_ray.metrics import AUC, scores_of
from turbo_ray.paths import RunPaths
from turbo_ray.plots import (
    plot_comparison,
    plot_confusion,
    plot_curves,
    plot_importances,
    plot_search_history,
)
from turbo_ray.search_space import SearchSpace
from turbo_ray.trials import (
    FOLD_TRIAL,
    SearchKey,
    best_score,
    best_trials,
    param_importances,
    trial_config,
    trial_id,
    trial_table,
)


def selection_table(results: pd.DataFrame, cfg: Config, by: list[str] | None = None) -> str:
    """What each search selected on its validation speakers: trial, epoch, score, parameters
    (and its mode and seed, where the job ran several)."""
    metric = cfg.tune.metric
    rows = [
        {
            **({"mode": row["mode"], "seed": row["seed"]} if by else {}),
            "test_session": row.test_session,
            "trial": row.trial,
            "epoch": row.best_epoch,
            metric: f"{100 * row[metric]:.2f}",
            **{k: short(v) for k, v in row.params.items()},
        }
        for _, row in results.iterrows()
    ]
    table = pd.DataFrame(rows).fillna("")  # a mode that does not search a parameter: blank
    return (
        "Selected per fold on its validation speakers (its test session never seen):\n"
        + table.to_string(index=False)
    )


def with_mean_std(results: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Per-fold rows plus mean and std rows of WA / UA / F1
    (per group of `by` columns, if given)."""
    groups = results.groupby(by, sort=False) if by else [((), results)]
    frames = []
    for key, group in groups:
        stats = group[list(scores_of(results))].agg(["mean", "std"])  # one fold: no std (NaN)
        extra = dict(zip(by, key if isinstance(key, tuple) else (key,))) if by else {}
        frames += [
            group,
            pd.DataFrame([{**extra, "test_session": s, **stats.loc[s]} for s in ("mean", "std")]),
        ]
    return pd.concat(frames, ignore_index=True)


def format_table(results: pd.DataFrame, title: str, by: list[str] | None = None) -> str:
    table = with_mean_std(results, by)
    scores = scores_of(table)
    columns = (by or []) + [c for c in ("seed",) if c in table] + ["test_session", *scores]
    if "seed" in table:  # an integer label, blank on the mean/std rows
        table["seed"] = table["seed"].map(lambda seed: "" if pd.isna(seed) else str(int(seed)))
    body = table[columns].to_string(
        index=False, float_format=lambda x: "     –" if np.isnan(x) else f"{100 * x:6.2f}"
    )
    auc = ", AUC = ROC-AUC of the positive class" if AUC in scores else ""
    legend = f"(WA = accuracy, UA = mean per-class recall, F1 = macro-F1{auc}; in %)"
    return f"{title}\n{legend}\n{body}"


def write_results(
    results: pd.DataFrame,
    paths: RunPaths,
    classes: list[str],
    cfg: Config,
    setup: dict,
    by: list[str] | None = None,
    comparison: pd.DataFrame | None = None,
) -> list[Path]:
    """results.csv, results.json (`setup`: the protocol, the outer folds and what selected the
    configs; the config, `comparison`: each mode against the baseline, per-fold rows),
    comparison.csv and .png (if any) and a summed confusion-matrix PNG; returns the paths
    written."""
    table = with_mean_std(results, by)
    table.drop(columns=["confusion"], errors="ignore").to_csv(paths.results_csv, index=False)
    extra = {}
    if comparison is not None:
        comparison.to_csv(paths.comparison_csv, index=False)
        plot_comparison(results, comparison, paths.comparison_png)
        extra["comparison"] = json.loads(comparison.to_json(orient="records"))
    paths.results_json.write_text(
        json.dumps(
            {
                **setup,
                "config": cfg.to_dict(),
                "classes": list(classes),
                **extra,
                "folds": json.loads(results.to_json(orient="records")),
            },
            indent=1,
        )
    )
    matrices = {
        mode: np.sum([np.array(c) for c in own.confusion], axis=0)
        for mode, own in results.groupby("mode", sort=False)
    }
    plot_confusion(matrices, classes, paths.confusion_png)
    written = [paths.results_csv, paths.results_json, paths.confusion_png]
    return written + (
        [paths.comparison_csv, paths.comparison_png] if comparison is not None else []
    )


def write_search_outputs(
    grid: ray.tune.ResultGrid, space: SearchSpace, cfg: Config, paths: RunPaths
) -> list[Path]:
    """trials.csv, each search's selected config (`best_config_<mode>-seed<s>-s<k>.yaml`) and
    the search plots (a panel per search); returns the paths written."""
    metric = cfg.tune.metric
    trials = trial_table(grid, space, cfg)
    trials.to_csv(paths.trials_csv, index=False)
    plot_search_history(trials, metric, paths.history_png)
    in_order = sorted(grid, key=lambda r: r.config[FOLD_TRIAL])
    curves = {
        key: {
            trial_id(r): r.metrics_dataframe
            for r in in_order
            if SearchKey.of(r.config) == key
            and r.metrics_dataframe is not None
            and metric in r.metrics_dataframe
        }
        for key in sorted({SearchKey.of(r.config) for r in grid})
    }
    selected = best_trials(grid, cfg)
    chosen = {key: (trial_id(r), selected_epoch(r, metric)) for key, r in selected.items()}
    plot_curves(curves, chosen, metric, paths.curves_png)
    written = [paths.trials_csv, paths.history_png, paths.curves_png]
    for key, result in sorted(selected.items()):
        path = paths.best_config(*key)
        best = best_score(result.metrics_dataframe, metric)
        score = f"trial {trial_id(result)}, best {metric} {best:.4f}"
        if key.fold == FINAL:
            header = f"# {key} (all of the corpus): {score}\n"
        else:
            header = (
                f"# {key} (test session {key.fold}): {score}, chosen on sessions other than "
                f"{key.fold}\n# re-run this fold: "
                f"turbo-ray train --config {path} --fold {key.fold}\n"
            )
        config = trial_config(cfg, result.config)
        path.write_text(header + yaml.safe_dump(config.to_dict(), sort_keys=False))
        written.append(path)
    importances = {
        mode: param_importances(trials[trials["mode"] == mode], space.for_mode(mode), metric)
        for mode in trials["mode"].unique()
    }
    if importances := {mode: values for mode, values in importances.items() if values}:
        plot_importances(importances, paths.importances_png)
        written.append(paths.importances_png)
    return written
