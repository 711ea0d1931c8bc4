"""Ray Tune: Optuna (TPE) proposes, ASHA stops early, each trial fits one TorchTrainer.

    space = load_search_space("experiments/configs/search_space.yaml")
    grid = run_search(cfg, corpus, space, out_dir, storage, resume=False)   # resumes an interrupted search
    best = best_trial(grid, cfg)                                       # (config, metrics) of the best epoch

A search space is a YAML mapping of dotted config keys to one distribution each, and optionally
`start`: points TPE evaluates first (e.g. the paper's settings):

    loss.temperature: {loguniform: [0.02, 0.5]}
    model.dropout: {uniform: [0.05, 0.3]}
    loss.cross_pairs: {choice: [["11", "22"], ["11", "22", "12", "21"]]}
    start: [{loss.temperature: 0.07, model.dropout: 0.1}]
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray.tune
import yaml
from ray.tune import TuneConfig, Tuner
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from turbo_ray.config import Config, ConfigError, override
from turbo_ray.data.corpus import Corpus
from turbo_ray.data.pipeline import configure_ray_data, split_dataset
from turbo_ray.plots import plot_curves, plot_importances, plot_search_history
from turbo_ray.runtime import DRIVER_RESOURCE
from turbo_ray.train import build_trainer, storage_uri

SEARCH_DIR = "search"


class SearchSpaceError(ConfigError):
    """A search-space file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    key: str        # dotted config key, e.g. "loss.temperature"
    kind: str       # loguniform | uniform | choice
    args: tuple

    def domain(self):
        if self.kind == "choice":
            return ray.tune.choice(list(self.args))
        return getattr(ray.tune, self.kind)(*self.args)

    def optuna_distribution(self):
        import optuna

        if self.kind == "choice":
            return optuna.distributions.CategoricalDistribution([_hashable(c) for c in self.args])
        return optuna.distributions.FloatDistribution(*self.args, log=self.kind == "loguniform")


@dataclass(frozen=True)
class SearchSpace:
    params: list[Param]
    start: list[dict]  # points evaluated first (Optuna's points_to_evaluate); may set a subset of keys


def load_search_space(path: str | Path) -> SearchSpace:
    """Parse and check a search-space file: every key must be a config key and both ends of every
    range (every choice, every start point) must make a valid config."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SearchSpaceError(f"{path}: cannot read the search space: {err}") from err
    if not isinstance(raw, dict) or not set(raw) - {"start"}:
        raise SearchSpaceError(f"{path}: expected a non-empty mapping of config keys to distributions")
    start = raw.pop("start", [])
    params = [_param(path, str(key), spec) for key, spec in raw.items()]
    for p in params:
        for value in (p.args if p.kind == "choice" else p.args[:2]):
            _check(path, {p.key: value})
    if not isinstance(start, list) or not all(isinstance(point, dict) for point in start):
        raise SearchSpaceError(f"{path}: start must be a list of {{key: value}} mappings, got {start!r}")
    for point in start:
        if unknown := sorted(set(point) - set(raw)):
            raise SearchSpaceError(f"{path}: start point {point} sets {unknown[0]!r}, which is not searched")
        _check(path, point)
    return SearchSpace(params, start)


def _check(path: Path, values: dict) -> None:
    try:
        override(Config(), values)
    except ConfigError as err:
        raise SearchSpaceError(f"{path}: {', '.join(values)}: {err}") from err


def _param(path: Path, key: str, spec: Any) -> Param:
    where = f"{path}: {key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SearchSpaceError(f"{where}: expected one distribution, e.g. {{loguniform: [0.01, 0.5]}}, got {spec!r}")
    (kind, args), = spec.items()
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SearchSpaceError(f"{where}: choice needs a non-empty list, got {args!r}")
        return Param(key, kind, tuple(args))
    if kind not in ("uniform", "loguniform"):
        raise SearchSpaceError(f"{where}: unknown distribution {kind!r} (use uniform, loguniform or choice)")
    if (not isinstance(args, list) or len(args) != 2
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
        raise SearchSpaceError(f"{where}: {kind} needs [low, high], got {args!r}")
    low, high = map(float, args)
    if not low < high or (kind == "loguniform" and low <= 0):
        raise SearchSpaceError(f"{where}: need {'0 < ' if kind == 'loguniform' else ''}low < high, got {args!r}")
    return Param(key, kind, (low, high))


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class ResumableASHA(ASHAScheduler):
    """ASHA whose rung records survive a killed driver. `Tuner.restore` brings back the trials and the
    searcher but not the scheduler, so a resumed search would forget the scores new trials must beat;
    this one saves its state (atomically) after every event and reloads it first thing after a restore."""

    def __init__(self, state_file: str, **kwargs):
        super().__init__(**kwargs)
        self.state_file, self._loaded = state_file, False

    def _load(self) -> None:
        if not self._loaded and Path(self.state_file).exists():
            self.restore(self.state_file)
        self._loaded = True

    def _save(self) -> None:
        self.save(f"{self.state_file}.tmp")
        os.replace(f"{self.state_file}.tmp", self.state_file)

    def on_trial_add(self, tune_controller, trial):
        self._load()
        super().on_trial_add(tune_controller, trial)
        self._save()

    def on_trial_result(self, tune_controller, trial, result):
        self._load()
        decision = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return decision

    def on_trial_complete(self, tune_controller, trial, result):
        self._load()
        super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def on_trial_remove(self, tune_controller, trial):
        self._load()
        super().on_trial_remove(tune_controller, trial)
        self._save()


def _trial(params: dict, *, base: dict, shards: str, split_ids: dict, classes: list) -> None:
    """One Tune trial = one TorchTrainer; it resumes its own run (named by trial id) after a restore."""
    configure_ray_data()  # this runs in the trial's own process
    cfg = override(Config.from_dict(base), params)
    datasets = {name: split_dataset(cfg, shards, ids, train=name == "train") for name, ids in split_ids.items()}
    trainer = build_trainer(cfg, datasets, classes, len(split_ids["train"]),
                            name=f"trial-{ray.tune.get_context().get_trial_id()}",
                            callbacks=[TuneReportCallback()])
    trainer.fit()


def run_search(cfg: Config, corpus: Corpus, space: SearchSpace, out_dir: Path, storage: str,
               resume: bool = False) -> ray.tune.ResultGrid:
    """TPE + ASHA on the fold `cfg.data.test_session`, both told each trial's best validation score so
    far (`best_<tune.metric>`: the score that selects the best trial); trials' Train runs go under
    `storage/trials`, Tune's state under `storage/search` (`storage`: a local path or a URI every node
    can reach), ASHA's state in `out_dir`. `resume` continues an interrupted search."""
    fold = corpus.fold(cfg.data)
    storage = storage_uri(storage)
    base = override(cfg, {"train.storage_path": f"{storage}/trials"})
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(_trial, base=base.to_dict(), shards=corpus.shards, classes=list(corpus.classes),
                                 split_ids={"train": fold.train.utterance_id.tolist(),
                                            "val": fold.val.utterance_id.tolist()}),
        {DRIVER_RESOURCE: 0.01})  # the trial only drives its TorchTrainer: no CPU of its own
    path = f"{storage}/{SEARCH_DIR}"
    if resume:
        if not Tuner.can_restore(path):
            raise FileNotFoundError(f"--resume: no search to resume in {path}")
        tuner = Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        if Tuner.can_restore(path):
            raise FileExistsError(f"{path} already holds a search: pass --resume, or another --output-dir")
        t = cfg.tune
        score = f"best_{t.metric}"  # a trial's best epoch so far: the score that selects its config
        tuner = Tuner(
            trainable,
            param_space={p.key: p.domain() for p in space.params},
            tune_config=TuneConfig(
                search_alg=OptunaSearch(metric=score, mode="max", seed=cfg.train.seed,
                                        points_to_evaluate=space.start or None),
                scheduler=ResumableASHA(str(out_dir / "asha_state.pkl"), metric=score, mode="max",
                                        time_attr="epoch", max_t=cfg.train.epochs, grace_period=t.grace_period,
                                        reduction_factor=t.reduction_factor),
                num_samples=t.num_samples, max_concurrent_trials=t.max_concurrent_trials,
            ),
            run_config=ray.tune.RunConfig(name=SEARCH_DIR, storage_path=storage),
        )
    return tuner.fit()


def trial_table(grid: ray.tune.ResultGrid, space: SearchSpace, cfg: Config) -> pd.DataFrame:
    """One row per trial: its parameters, epochs run, best and last validation UA, early-stopped or not."""
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        scores = history[cfg.tune.metric] if history is not None and cfg.tune.metric in history else pd.Series()
        epochs = int(history["epoch"].max()) if len(scores) else 0
        rows.append({"trial": (result.metrics or {}).get("trial_id", ""),
                     **{p.key: result.config.get(p.key) for p in space.params},
                     "epochs": epochs, f"best_{cfg.tune.metric}": scores.max() if len(scores) else float("nan"),
                     f"last_{cfg.tune.metric}": scores.iloc[-1] if len(scores) else float("nan"),
                     "stopped_early": 0 < epochs < cfg.train.epochs and result.error is None,
                     "error": type(result.error).__name__ if result.error else ""})
    return pd.DataFrame(rows)


def best_trial(grid: ray.tune.ResultGrid, cfg: Config) -> tuple[Config, dict]:
    """The config of the trial with the best epoch (ASHA-stopped trials included) and that epoch's
    metrics; ties go to the earlier trial and epoch."""
    metric = cfg.tune.metric
    histories = [(r, r.metrics_dataframe) for r in grid
                 if r.metrics_dataframe is not None and metric in r.metrics_dataframe]
    if not histories:
        raise RuntimeError(f"no trial reported {metric}; first error: {next((r.error for r in grid if r.error), None)}")
    result, history = max(histories, key=lambda rh: rh[1][metric].max())
    return override(cfg, result.config), history.loc[history[metric].idxmax()].to_dict()


def param_importances(trials: pd.DataFrame, space: SearchSpace, metric: str) -> dict[str, float]:
    """Optuna's fANOVA importances of the searched parameters for each trial's best score."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done = trials.dropna(subset=[f"best_{metric}"])
    if done[f"best_{metric}"].nunique() < 2:
        return {}  # nothing to explain
    study = optuna.create_study(direction="maximize")
    distributions = {p.key: p.optuna_distribution() for p in space.params}
    for _, row in done.iterrows():
        study.add_trial(optuna.trial.create_trial(
            params={p.key: _hashable(row[p.key]) for p in space.params}, distributions=distributions,
            value=float(row[f"best_{metric}"])))
    return optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))


def write_search_outputs(grid: ray.tune.ResultGrid, space: SearchSpace, cfg: Config, out_dir: Path) -> list[Path]:
    """trials.csv, best_config.yaml and the search plots; returns the paths written."""
    metric = cfg.tune.metric
    trials = trial_table(grid, space, cfg)
    best_cfg, best_metrics = best_trial(grid, cfg)
    paths = {name: out_dir / name for name in ("trials.csv", "best_config.yaml", "optimization_history.png",
                                               "ua_per_epoch.png", "param_importances.png")}
    trials.to_csv(paths["trials.csv"], index=False)
    header = (f"# best {metric} {best_metrics[metric]:.4f} at epoch {best_metrics['epoch']} of trial "
              f"{best_metrics.get('trial_id')}\n# re-run: turbo-ray train --config {paths['best_config.yaml']}\n")
    paths["best_config.yaml"].write_text(header + yaml.safe_dump(best_cfg.to_dict(), sort_keys=False))
    plot_search_history(trials, metric, paths["optimization_history.png"])
    plot_curves({r.metrics.get("trial_id", str(i)): r.metrics_dataframe for i, r in enumerate(grid)
                 if r.metrics_dataframe is not None and metric in r.metrics_dataframe}, metric,
                paths["ua_per_epoch.png"])
    importances = param_importances(trials, space, metric)
    if importances:
        plot_importances(importances, paths["param_importances.png"])
    else:
        del paths["param_importances.png"]
    return list(paths.values())
