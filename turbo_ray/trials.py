"""What a search's trials did, read from Tune's records: a row per trial, each fold's selected
trial and epoch, the parameters' importances, and the search's output files.

    trials = trial_table(grid, space, cfg)        # fold, parameters, epochs, best score, stopped
    best = best_trials(grid, cfg)                 # {fold: the trial its search selects}

A trial's config holds the searched parameters plus its outer fold (`FOLD`, the test session it
must never see) and its launch order within that fold (`FOLD_TRIAL`: ties go to the earlier).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import ray.tune
import yaml

from turbo_ray.config import Config, override
from turbo_ray.paths import RunPaths
from turbo_ray.plots import plot_curves, plot_importances, plot_search_history
from turbo_ray.search_space import SearchSpace, hashable

FOLD = "fold"
FOLD_TRIAL = "fold_trial"


def searched(config: dict) -> dict:
    """A trial's config without its fold bookkeeping: the searched parameters only."""
    return {k: v for k, v in config.items() if k not in (FOLD, FOLD_TRIAL)}


def trial_id(result: ray.tune.Result) -> str:
    """Tune's id of the trial; its folder is `RunPaths.trial_dir(id)`."""
    return (result.metrics or {}).get("trial_id", "")


def stopped_early(epochs_run: int, epochs: int, failed: bool) -> bool:
    """A trial that ended before its last epoch without an error: ASHA stopped it."""
    return 0 < epochs_run < epochs and not failed


def trial_table(grid: ray.tune.ResultGrid, space: SearchSpace, cfg: Config) -> pd.DataFrame:
    """One row per trial: its fold, parameters, epochs run, best and last validation score,
    whether ASHA stopped it, its error."""
    metric, rows = cfg.tune.metric, []
    for result in grid:
        history = result.metrics_dataframe
        scores = history[metric] if history is not None and metric in history else pd.Series()
        epochs = int(history["epoch"].max()) if len(scores) else 0
        rows.append(
            {
                FOLD: result.config[FOLD],
                FOLD_TRIAL: result.config[FOLD_TRIAL],
                "trial": trial_id(result),
                **{p.key: result.config.get(p.key) for p in space.params},
                "epochs": epochs,
                f"best_{metric}": best_score(history, metric) if len(scores) else float("nan"),
                f"last_{metric}": scores.iloc[-1] if len(scores) else float("nan"),
                "stopped_early": stopped_early(epochs, cfg.train.epochs, bool(result.error)),
                "error": type(result.error).__name__ if result.error else "",
            }
        )
    return pd.DataFrame(rows).sort_values([FOLD, FOLD_TRIAL], ignore_index=True)


def best_score(history: pd.DataFrame, metric: str) -> float:
    """A trial's best validation score: the running best its epochs report (exact even where a
    restored trial's history lacks the epochs between Tune's last snapshot and its Train
    checkpoint)."""
    return history[f"best_{metric}"].max()


def best_trials(grid: ray.tune.ResultGrid, cfg: Config) -> dict[int, ray.tune.Result]:
    """Per fold, the trial with the best epoch (ASHA-stopped trials included; ties go to the earlier
    trial): only validation scores of that fold's own search decide."""
    metric, best = cfg.tune.metric, {}
    # launch order: ties go to the earlier
    for result in sorted(grid, key=lambda r: r.config[FOLD_TRIAL]):
        history = result.metrics_dataframe
        if history is None or metric not in history:
            continue
        fold = result.config[FOLD]
        score = best_score(history, metric)
        if fold not in best or score > best_score(best[fold].metrics_dataframe, metric):
            best[fold] = result
    if missing := sorted({r.config[FOLD] for r in grid} - set(best)):
        errors = [r.error for r in grid if r.error and r.config[FOLD] in missing]
        raise RuntimeError(
            f"no trial of fold(s) {missing} reported {metric}; first error: {errors[:1]}"
        )
    return best


def param_importances(trials: pd.DataFrame, space: SearchSpace, metric: str) -> dict[str, float]:
    """Optuna's fANOVA importances of the searched parameters for each trial's best score,
    centred per fold (folds differ in difficulty, not in what the parameters do)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done = trials.dropna(subset=[f"best_{metric}"])
    score = done[f"best_{metric}"] - done.groupby(FOLD)[f"best_{metric}"].transform("mean")
    if score.nunique() < 2:
        return {}  # nothing to explain
    study = optuna.create_study(direction="maximize")
    distributions = {p.key: p.optuna_distribution() for p in space.params}
    for (_, row), value in zip(done.iterrows(), score):
        study.add_trial(
            optuna.trial.create_trial(
                params={p.key: hashable(row[p.key]) for p in space.params},
                distributions=distributions,
                value=float(value),
            )
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return optuna.importance.get_param_importances(study, evaluator=evaluator)


def write_search_outputs(
    grid: ray.tune.ResultGrid, space: SearchSpace, cfg: Config, paths: RunPaths
) -> list[Path]:
    """trials.csv, each fold's selected config (`best_config_s<k>.yaml`) and the search plots
    (a panel per fold); returns the paths written."""
    metric = cfg.tune.metric
    trials = trial_table(grid, space, cfg)
    trials.to_csv(paths.trials_csv, index=False)
    plot_search_history(trials, metric, paths.history_png)
    in_order = sorted(grid, key=lambda r: r.config[FOLD_TRIAL])
    curves = {
        fold: {
            trial_id(r): r.metrics_dataframe
            for r in in_order
            if r.config[FOLD] == fold
            and r.metrics_dataframe is not None
            and metric in r.metrics_dataframe
        }
        for fold in sorted(trials[FOLD].unique())
    }
    plot_curves(curves, metric, paths.curves_png)
    written = [paths.trials_csv, paths.history_png, paths.curves_png]
    for fold, result in sorted(best_trials(grid, cfg).items()):
        path = paths.best_config(fold)
        header = (
            f"# fold {fold} (test session {fold}): trial {trial_id(result)}, best {metric} "
            f"{best_score(result.metrics_dataframe, metric):.4f}, chosen on sessions other than "
            f"{fold}\n# re-run this fold: turbo-ray train --config {path} --fold {fold}\n"
        )
        config = override(cfg, searched(result.config))
        path.write_text(header + yaml.safe_dump(config.to_dict(), sort_keys=False))
        written.append(path)
    if importances := param_importances(trials, space, metric):
        plot_importances(importances, paths.importances_png)
        written.append(paths.importances_png)
    return written
