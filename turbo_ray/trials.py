"""What a search's trials did, read from Tune's records: a row per trial, each fold's selected
trial and epoch, the parameters' importances. It writes no file: `results.py` does.

    trials = trial_table(grid, space, cfg)   # its search, parameters, epochs, best score, stopped
    best = best_trials(grid, cfg)            # {SearchKey: the trial that search selects}

A job runs one search per `SearchKey`: loss mode, training seed and outer fold. A trial's config
holds its searched parameters, its search's mode and seed (as the config keys `MODE`, `SEED`), its
outer fold (`FOLD`, whose test split it must never see) and its launch order within its search
(`FOLD_TRIAL`: ties go to the earlier).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd
import ray.tune

from turbo_ray.config import Config, override
from turbo_ray.data.folds import FINAL
from turbo_ray.search_space import SearchSpace, hashable

MODE, SEED = "loss.mode", "train.seed"
FOLD = "fold"
FOLD_TRIAL = "fold_trial"


class SearchKey(NamedTuple):
    """One search of a job: the nested protocol's search for one outer fold, run for one loss mode
    and training seed."""

    mode: str
    seed: int
    fold: int

    @classmethod
    def of(cls, config: dict) -> SearchKey:
        """The search a trial belongs to, from its config."""
        return cls(config[MODE], config[SEED], config[FOLD])

    def config(self) -> dict:
        """What a trial's config holds of its search."""
        return {MODE: self.mode, SEED: self.seed, FOLD: self.fold}

    def __str__(self) -> str:
        fold = "final" if self.fold == FINAL else f"fold {self.fold}"
        return f"{self.mode} seed {self.seed} {fold}"


def searched(config: dict) -> dict:
    """A trial's searched parameters: its config without its search's keys and launch order."""
    return {k: v for k, v in config.items() if k not in (MODE, SEED, FOLD, FOLD_TRIAL)}


def trial_name(config: dict) -> str:
    """How progress lines and MLflow name a trial: its search and launch order in it."""
    return f"{SearchKey.of(config)} trial {config[FOLD_TRIAL]}"


# what makes a job's config one run's: its own mode and seed once, not the job's modes, seeds,
# folds or final model (so its config, run again with `turbo-ray train`, is that run)
ONE_RUN = {"tune.modes": None, "tune.seeds": None, "tune.folds": None, "tune.final": False}


def trial_config(cfg: Config, config: dict) -> Config:
    """The config a trial ran: the job's, with its search's mode and seed and its parameters."""
    return override(cfg, ONE_RUN | searched(config) | {MODE: config[MODE], SEED: config[SEED]})


def trial_id(result: ray.tune.Result) -> str:
    """Tune's id of the trial; its folder is `RunPaths.trial_dir(id)`."""
    return (result.metrics or {}).get("trial_id", "")


def stopped_early(epochs_run: int, epochs: int, failed: bool) -> bool:
    """A trial that ended before its last epoch without an error: ASHA stopped it."""
    return 0 < epochs_run < epochs and not failed


def trial_table(grid: ray.tune.ResultGrid, space: SearchSpace, cfg: Config) -> pd.DataFrame:
    """One row per trial: its search, parameters (empty where its mode does not search one),
    epochs run, best and last validation score, whether ASHA stopped it, its error."""
    metric, rows = cfg.tune.metric, []
    for result in grid:
        history = result.metrics_dataframe
        scores = history[metric] if history is not None and metric in history else pd.Series()
        epochs = int(history["epoch"].max()) if len(scores) else 0
        rows.append(
            {
                "mode": result.config[MODE],
                "seed": result.config[SEED],
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
    order = ["mode", "seed", FOLD, FOLD_TRIAL]
    return pd.DataFrame(rows).sort_values(order, ignore_index=True)


def failed_trials(grid: ray.tune.ResultGrid) -> list[dict]:
    """The trials that failed for good (for results.json): their searches' later trials were
    proposed and judged without them, so this run's trials are not another run's."""
    failed = [r for r in grid if r.error]
    return [
        {
            "search": str(SearchKey.of(r.config)),
            FOLD_TRIAL: r.config[FOLD_TRIAL],
            "trial": Path(r.path).name,
            "error": type(r.error).__name__,
        }
        for r in sorted(failed, key=lambda r: (SearchKey.of(r.config), r.config[FOLD_TRIAL]))
    ]


def not_comparable(failed: list[dict]) -> str | None:
    """What a job with failed trials says under its selection (None: nothing failed)."""
    if not failed:
        return None
    names = "; ".join(f"{f['search']} trial {f[FOLD_TRIAL]} ({f['error']})" for f in failed)
    return (
        f"Not comparable with another run of this config: {names} failed for good; the later "
        "trials of its search were proposed and judged without it "
        "(docs/protocol.md: Reproducibility)."
    )


def best_score(history: pd.DataFrame, metric: str) -> float:
    """A trial's best validation score: the running best its epochs report (exact even where a
    restored trial's history lacks the epochs between Tune's last snapshot and its Train
    checkpoint)."""
    return history[f"best_{metric}"].max()


def best_trials(grid: ray.tune.ResultGrid, cfg: Config) -> dict[SearchKey, ray.tune.Result]:
    """Per search, the trial with the best epoch (ASHA-stopped trials included; ties go to the
    earlier trial): only validation scores of that search's own trials decide."""
    metric, best = cfg.tune.metric, {}
    # launch order: ties go to the earlier
    for result in sorted(grid, key=lambda r: r.config[FOLD_TRIAL]):
        history = result.metrics_dataframe
        if history is None or metric not in history:
            continue
        key = SearchKey.of(result.config)
        score = best_score(history, metric)
        if key not in best or score > best_score(best[key].metrics_dataframe, metric):
            best[key] = result
    if missing := sorted({SearchKey.of(r.config) for r in grid} - set(best)):
        errors = [r.error for r in grid if r.error and SearchKey.of(r.config) in missing]
        raise RuntimeError(
            f"no trial of {', '.join(map(str, missing))} reported {metric}; "
            f"first error: {errors[:1]}"
        )
    return best


def param_importances(trials: pd.DataFrame, space: SearchSpace, metric: str) -> dict[str, float]:
    """Optuna's fANOVA importances of the searched parameters for each trial's best score, over
    the trials of one mode's searches, centred per search (folds differ in difficulty, not in
    what the parameters do)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done = trials.dropna(subset=[f"best_{metric}"])
    by_search = done.groupby(["seed", FOLD])[f"best_{metric}"]
    score = done[f"best_{metric}"] - by_search.transform("mean")
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
