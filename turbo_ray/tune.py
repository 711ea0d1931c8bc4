"""Ray Tune: one search per outer LOSO fold, Optuna (TPE) proposes, ASHA stops early, each trial
trains on its fold's training sessions: inside its own process with one worker (processes are
reused from trial to trial), through a TorchTrainer with more (DDP).

    space = load_search_space("experiments/configs/search_space.yaml")
    grid = run_search(cfg, folds, space, corpus, paths)     # resume=True continues a killed one
    best = best_trials(grid, cfg)                           # {fold: the trial its search selects}

A search space is a YAML mapping of dotted config keys to one distribution each, and optionally
`start`: points TPE evaluates first (e.g. the paper's settings):

    loss.temperature: {loguniform: [0.02, 0.5]}
    model.dropout: {uniform: [0.05, 0.3]}
    loss.cross_pairs: {choice: [["11", "22"], ["11", "22", "12", "21"]]}
    start: [{loss.temperature: 0.07, model.dropout: 0.1}]
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs as pafs
import ray.tune
import yaml
from ray.tune import Callback, TuneConfig, Tuner
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from turbo_ray.config import Config, ConfigError, override
from turbo_ray.data.corpus import Corpus
from turbo_ray.data.iemocap import Fold
from turbo_ray.data.pipeline import feed_cpus
from turbo_ray.paths import RunPaths
from turbo_ray.plots import plot_curves, plot_importances, plot_search_history
from turbo_ray.runtime import DRIVER_RESOURCE
from turbo_ray.train import (
    build_trainer,
    device_of,
    fit,
    loop_config,
    retention,
    trial_context,
    worker_resources,
)

# the trial-config keys of a trial's outer fold (= its test session) and of its launch order
# within the fold (0, 1, …): ties go to the earlier trial
FOLD = "fold"
RANK = "fold_trial"
# beside a trial's checkpoints: the ids it trained and validated on
UTTERANCES_FILE = "utterances.json"


class SearchSpaceError(ConfigError):
    """A search-space file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    key: str  # dotted config key, e.g. "loss.temperature"
    kind: str  # loguniform | uniform | choice
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
    start: list[
        dict
    ]  # points evaluated first (Optuna's points_to_evaluate); may set a subset of keys


def load_search_space(path: str | Path) -> SearchSpace:
    """Parse and check a search-space file: every key must be a config key and both ends of every
    range (every choice, every start point) must make a valid config."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SearchSpaceError(f"{path}: cannot read the search space: {err}") from err
    if not isinstance(raw, dict) or not set(raw) - {"start"}:
        raise SearchSpaceError(
            f"{path}: expected a non-empty mapping of config keys to distributions"
        )
    start = raw.pop("start", [])
    params = [_param(path, str(key), spec) for key, spec in raw.items()]
    for p in params:
        for value in p.args if p.kind == "choice" else p.args[:2]:
            _check(path, {p.key: value})
    if not isinstance(start, list) or not all(isinstance(point, dict) for point in start):
        raise SearchSpaceError(
            f"{path}: start must be a list of {{key: value}} mappings, got {start!r}"
        )
    for point in start:
        if unknown := sorted(set(point) - set(raw)):
            raise SearchSpaceError(
                f"{path}: start point {point} sets {unknown[0]!r}, which is not searched"
            )
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
        raise SearchSpaceError(
            f"{where}: expected one distribution, e.g. {{loguniform: [0.01, 0.5]}}, got {spec!r}"
        )
    ((kind, args),) = spec.items()
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SearchSpaceError(f"{where}: choice needs a non-empty list, got {args!r}")
        return Param(key, kind, tuple(args))
    if kind not in ("uniform", "loguniform"):
        raise SearchSpaceError(
            f"{where}: unknown distribution {kind!r} (use uniform, loguniform or choice)"
        )
    if (
        not isinstance(args, list)
        or len(args) != 2
        or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    ):
        raise SearchSpaceError(f"{where}: {kind} needs [low, high], got {args!r}")
    low, high = map(float, args)
    if not low < high or (kind == "loguniform" and low <= 0):
        raise SearchSpaceError(
            f"{where}: need {'0 < ' if kind == 'loguniform' else ''}low < high, got {args!r}"
        )
    return Param(key, kind, (low, high))


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class FoldSearch(Searcher):
    """One independent TPE search per outer LOSO fold, all in one Tune experiment (so the folds'
    searches share the cluster). A fold runs one trial at a time: its TPE proposes each trial
    knowing every earlier trial's result, and its ASHA sees them in launch order, so the same seed
    gives the same search whatever the machine's speed; the folds run side by side. Each new trial
    goes to the free fold with the fewest trials so far; its config carries `fold` (the test
    session it must never see) and `fold_trial` (its launch order in the fold). Results reach only
    that fold's searcher; a failed trial is told to it when a resumed run completes it."""

    def __init__(
        self, folds: list[int], trials_per_fold: int, metric: str, start: list[dict], seed: int
    ):
        super().__init__(metric=metric, mode="max")
        self.trials_per_fold = trials_per_fold
        self.searchers = {
            k: OptunaSearch(
                metric=metric,
                mode="max",
                seed=sampler_seed(seed, k),
                points_to_evaluate=copy.deepcopy(start) or None,
            )
            for k in folds
        }
        self.fold_of: dict[str, int] = {}  # the trials this searcher proposed
        self.running: dict[int, str] = {}  # fold → its running trial

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        done = [
            s.set_search_properties(metric, mode, config, **spec) for s in self.searchers.values()
        ]
        return all(done)  # every fold's searcher told, not only up to the first refusal

    def suggest(self, trial_id: str) -> dict | str | None:
        counts = {k: list(self.fold_of.values()).count(k) for k in self.searchers}
        open_folds = [k for k, n in counts.items() if n < self.trials_per_fold]
        if not open_folds:
            return Searcher.FINISHED
        free = [k for k in open_folds if k not in self.running]
        if not free:
            return None  # asked again when a trial ends
        fold = min(free, key=lambda k: (counts[k], k))
        params = self.searchers[fold].suggest(trial_id)
        if not isinstance(params, dict):
            return params
        self.fold_of[trial_id] = fold
        self.running[fold] = trial_id
        return params | {FOLD: fold, RANK: counts[fold]}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.fold_of:
            self.searchers[self.fold_of[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """A finished (or ASHA-stopped) trial's best score goes to its fold's TPE. Its fold is
        read from its config (Tune's state and this searcher's are saved apart: a restored
        experiment can hold a trial this searcher never proposed; its result is added as an
        evaluated point). A failed trial frees its fold but is not told as failed: Optuna would
        drop the completion of the resumed run."""
        config = (result or {}).get("config") or {}
        fold = config.get(FOLD, self.fold_of.get(trial_id))
        if fold is None:
            return  # failed before reporting, and never proposed by this searcher
        if self.running.get(fold) == trial_id:
            del self.running[fold]
        if error or not result or self.metric not in result:
            return
        if trial_id in self.fold_of:
            self.searchers[fold].on_trial_complete(trial_id, result)
        else:
            self.searchers[fold].add_evaluated_point(searched(config), result[self.metric])

    def save(self, checkpoint_path: str) -> None:
        states = {}
        with tempfile.TemporaryDirectory() as tmp:
            for k, searcher in self.searchers.items():
                searcher.save(f"{tmp}/{k}")
                states[k] = Path(f"{tmp}/{k}").read_bytes()
        state = {"fold_of": self.fold_of, "running": self.running, "states": states}
        Path(checkpoint_path).write_bytes(pickle.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        saved = pickle.loads(Path(checkpoint_path).read_bytes())
        self.fold_of, self.running = saved["fold_of"], saved["running"]
        with tempfile.TemporaryDirectory() as tmp:
            for k, state in saved["states"].items():
                Path(f"{tmp}/{k}").write_bytes(state)
                self.searchers[k].restore(f"{tmp}/{k}")


def search_record(space: SearchSpace, cfg: Config, folds: list[int]) -> dict:
    """What selected each fold's config, for results.json: the space, its start points, the
    trials per fold and each fold's TPE seed."""
    return {
        "space": {p.key: {p.kind: list(p.args)} for p in space.params},
        "start": space.start,
        "trials_per_fold": cfg.tune.num_samples,
        "sampler_seeds": {k: sampler_seed(cfg.train.seed, k) for k in folds},
    }


def sampler_seed(seed: int, fold: int) -> int:
    """The seed of fold `fold`'s TPE sampler (`results.json` records it)."""
    return seed + fold


class FoldASHA(FIFOScheduler):
    """ASHA per outer fold: a trial competes only with its own fold's trials."""

    def __init__(self, folds: list[int], **asha: Any):
        super().__init__()
        self.ashas = {k: ASHAScheduler(**asha) for k in folds}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        done = [a.set_search_properties(metric, mode, **spec) for a in self.ashas.values()]
        return all(done)

    def on_trial_add(self, tune_controller, trial):
        self.ashas[trial.config[FOLD]].on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self.ashas[trial.config[FOLD]].on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        self.ashas[trial.config[FOLD]].on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self.ashas[trial.config[FOLD]].on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"fold {k}: {a.debug_string()}" for k, a in self.ashas.items())


class SchedulerState(Callback):
    """Keeps a `FoldASHA`'s rungs in Tune's own experiment state. `Tuner.restore` brings back the
    trials, the searcher and the callbacks' states, not the scheduler's; Tune saves this callback's
    state with its own, wherever the experiment is stored (an `s3://` storage path too), and
    restores it before the restored trials are added, so a resumed driver, on any machine, continues
    every fold's ASHA where it stopped."""

    def __init__(self, scheduler: FoldASHA):
        self.scheduler = scheduler  # the same object as the Tuner's (one pickle holds both)

    def get_state(self) -> dict:
        return {k: a.__dict__ for k, a in self.scheduler.ashas.items()}

    def set_state(self, state: dict) -> None:
        for k, saved in state.items():
            self.scheduler.ashas[k].__dict__.update(saved)


def trains_in_trial(cfg: Config) -> bool:
    """One worker: the trial trains in its own process (Ray's pattern for a GPU per trial). More:
    the trial drives a TorchTrainer of that many DDP workers."""
    return cfg.train.num_workers == 1


def trial_resources(cfg: Config) -> ray.tune.PlacementGroupFactory:
    """What a trial reserves. Training in the trial: a worker's CPU (and GPU) plus a bundle for
    the Ray Data tasks that feed it, placed together. Driving a TorchTrainer: a sliver of the
    driver resource and no CPU, since Train reserves its workers itself."""
    if not trains_in_trial(cfg):
        return ray.tune.PlacementGroupFactory([{DRIVER_RESOURCE: 0.01}])
    return ray.tune.PlacementGroupFactory(
        [worker_resources(cfg), {"CPU": feed_cpus(cfg.data)}], strategy="PACK"
    )


def _trial(
    params: dict, *, base: dict, shards: str, splits: dict, classes: list, paths: RunPaths
) -> None:
    """One Tune trial: one run on its fold's train/val split, inside this process (one worker) or
    through a TorchTrainer (DDP) that writes its checkpoints to this trial's folder. It records the
    utterances it trains and validates on (`utterances.json`, in the trial's folder) and resumes
    from its last checkpoint after a restore or a failure."""
    fold = params[FOLD]
    cfg = override(Config.from_dict(base), searched(params))
    split_ids, trial = splits[fold], ray.tune.get_context().get_trial_id()
    fs, run_dir = pafs.FileSystem.from_uri(paths.trial_dir(trial))
    fs.create_dir(run_dir)
    with fs.open_output_stream(f"{run_dir}/{UTTERANCES_FILE}") as f:
        f.write(json.dumps({"fold": fold, **split_ids}).encode())
    if trains_in_trial(cfg):  # its data fed inside this trial's reservation (`trial_resources`)
        fit(loop_config(cfg, classes, shards, split_ids), trial_context(device_of(cfg)))
        return
    cfg = override(cfg, {"train.storage_path": paths.search})
    name = RunPaths.trial_name(trial)  # the run's folder is the trial's
    trainer = build_trainer(cfg, shards, split_ids, classes, name, callbacks=[TuneReportCallback()])
    trainer.fit()


def _trial_dirname(trial: ray.tune.experiment.Trial) -> str:
    """A trial's folder under the search holds Tune's records of it and its checkpoints, whichever
    runner trained (a TorchTrainer's run is named the same)."""
    return RunPaths.trial_name(trial.trial_id)


def run_search(
    cfg: Config,
    folds: list[Fold],
    space: SearchSpace,
    corpus: Corpus,
    paths: RunPaths,
    resume: bool = False,
    callbacks: list | None = None,
) -> ray.tune.ResultGrid:
    """One Tune experiment holding an independent search per fold (`FoldSearch`, `FoldASHA`): each
    fold's trials train and validate on the other sessions only. TPE and ASHA are told each trial's
    best validation score so far (`best_<tune.metric>`: the score that selects). Tune's state
    (ASHA's rungs included) and a folder per trial go to `paths.search`. `resume` continues an
    interrupted search (a finished one returns its results, training nothing). `callbacks`: Tune
    callbacks, e.g. progress lines (Tune's own output is off)."""
    # Tune's own tables and hints off (`verbose=0` silences only its legacy reporter): the job
    # prints its progress through `callbacks`
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    splits = {
        f.test_session: {"train": f.train.utterance_id.tolist(), "val": f.val.utterance_id.tolist()}
        for f in folds
    }
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(
            _trial,
            base=cfg.to_dict(),
            shards=corpus.shards,
            splits=splits,
            classes=list(corpus.classes),
            paths=paths,
        ),
        trial_resources(cfg),
    )
    if Tuner.can_restore(paths.search):
        if not resume:
            raise FileExistsError(
                f"{paths.search} already holds a search: pass --resume, or another --output-dir"
            )
        return Tuner.restore(
            paths.search, trainable, resume_unfinished=True, resume_errored=True
        ).fit()
    # a new search; or resuming a job killed before Tune first saved its state: nothing to keep
    t, sessions, in_trial = cfg.tune, list(splits), trains_in_trial(cfg)
    score = f"best_{t.metric}"  # a trial's best epoch so far: the score that selects its config
    asha = FoldASHA(
        sessions,
        metric=score,
        mode="max",
        time_attr="epoch",
        max_t=cfg.train.epochs,
        grace_period=t.grace_period,
        reduction_factor=t.reduction_factor,
    )
    tuner = Tuner(
        trainable,
        param_space={p.key: p.domain() for p in space.params},
        tune_config=TuneConfig(
            search_alg=FoldSearch(sessions, t.num_samples, score, space.start, cfg.train.seed),
            scheduler=asha,
            num_samples=t.num_samples * len(sessions),
            max_concurrent_trials=t.max_concurrent_trials,
            # a trial that trains in its process hands it to the next trial (a TorchTrainer's
            # driver cannot: stopped inside `fit`, its thread never ends)
            reuse_actors=in_trial,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=ray.tune.RunConfig(
            name=RunPaths.SEARCH,
            storage_path=paths.storage,
            callbacks=[*(callbacks or []), SchedulerState(asha)],
            checkpoint_config=ray.tune.CheckpointConfig(**retention(cfg, validated=True)),
            # a trial that trains in its process is restarted by Tune (a TorchTrainer by Train)
            failure_config=ray.tune.FailureConfig(
                max_failures=cfg.train.max_failures if in_trial else 0
            ),
            verbose=0,
        ),
    )
    return tuner.fit()


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
                "fold": result.config[FOLD],
                RANK: result.config[RANK],
                "trial": trial_id(result),
                **{p.key: result.config.get(p.key) for p in space.params},
                "epochs": epochs,
                f"best_{metric}": _best(history, metric) if len(scores) else float("nan"),
                f"last_{metric}": scores.iloc[-1] if len(scores) else float("nan"),
                "stopped_early": 0 < epochs < cfg.train.epochs and result.error is None,
                "error": type(result.error).__name__ if result.error else "",
            }
        )
    return pd.DataFrame(rows).sort_values(["fold", RANK], ignore_index=True)


def _best(history: pd.DataFrame, metric: str) -> float:
    """A trial's best validation score: the running best its epochs report (exact even where a
    restored trial's history lacks the epochs between Tune's last snapshot and its Train
    checkpoint)."""
    return history[f"best_{metric}"].max()


def selected_epoch(result: ray.tune.Result, metric: str) -> int:
    """The epoch of a trial's best validation score, as its runs reported it (exact where a
    restored trial's history lacks epochs)."""
    history = result.metrics_dataframe
    return int(history.loc[history[f"best_{metric}"].idxmax(), "best_epoch"])


def searched(config: dict) -> dict:
    """A trial's config without its fold bookkeeping: the searched parameters only."""
    return {k: v for k, v in config.items() if k not in (FOLD, RANK)}


def trial_id(result: ray.tune.Result) -> str:
    """Tune's id of the trial; its folder is `RunPaths.trial_dir(id)`."""
    return (result.metrics or {}).get("trial_id", "")


def best_trials(grid: ray.tune.ResultGrid, cfg: Config) -> dict[int, ray.tune.Result]:
    """Per fold, the trial with the best epoch (ASHA-stopped trials included; ties go to the earlier
    trial): only validation scores of that fold's own search decide."""
    metric, best = cfg.tune.metric, {}
    # launch order: ties go to the earlier
    for result in sorted(grid, key=lambda r: r.config[RANK]):
        history = result.metrics_dataframe
        if history is None or metric not in history:
            continue
        fold = result.config[FOLD]
        if fold not in best or _best(history, metric) > _best(best[fold].metrics_dataframe, metric):
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
    score = done[f"best_{metric}"] - done.groupby("fold")[f"best_{metric}"].transform("mean")
    if score.nunique() < 2:
        return {}  # nothing to explain
    study = optuna.create_study(direction="maximize")
    distributions = {p.key: p.optuna_distribution() for p in space.params}
    for (_, row), value in zip(done.iterrows(), score):
        study.add_trial(
            optuna.trial.create_trial(
                params={p.key: _hashable(row[p.key]) for p in space.params},
                distributions=distributions,
                value=float(value),
            )
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return optuna.importance.get_param_importances(study, evaluator=evaluator)


def write_search_outputs(
    grid: ray.tune.ResultGrid, space: SearchSpace, cfg: Config, out_dir: Path
) -> list[Path]:
    """trials.csv, each fold's selected config (`best_config_s<k>.yaml`) and the search plots
    (a panel per fold); returns the paths written."""
    metric = cfg.tune.metric
    trials = trial_table(grid, space, cfg)
    paths = [
        out_dir / name for name in ("trials.csv", "optimization_history.png", "ua_per_epoch.png")
    ]
    trials.to_csv(paths[0], index=False)
    plot_search_history(trials, metric, paths[1])
    plot_curves(
        {
            fold: {
                trial_id(r): r.metrics_dataframe
                for r in sorted(grid, key=lambda r: r.config[RANK])
                if r.config[FOLD] == fold
                and r.metrics_dataframe is not None
                and metric in r.metrics_dataframe
            }
            for fold in sorted(trials.fold.unique())
        },
        metric,
        paths[2],
    )
    for fold, result in sorted(best_trials(grid, cfg).items()):
        path = out_dir / f"best_config_s{fold}.yaml"
        header = (
            f"# fold {fold} (test session {fold}): trial {trial_id(result)}, best {metric} "
            f"{_best(result.metrics_dataframe, metric):.4f}, chosen on sessions other than {fold}\n"
            f"# re-run this fold: turbo-ray train --config {path} --fold {fold}\n"
        )
        config = override(cfg, searched(result.config))
        path.write_text(header + yaml.safe_dump(config.to_dict(), sort_keys=False))
        paths.append(path)
    importances = param_importances(trials, space, metric)
    if importances:
        paths.append(out_dir / "param_importances.png")
        plot_importances(importances, paths[-1])
    return paths
