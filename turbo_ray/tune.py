"""Ray Tune: one search per outer LOSO fold (and loss mode and training seed), Optuna (TPE)
proposes, ASHA stops early, each trial trains on its fold's training sessions: inside its own
process with one worker (processes are reused from trial to trial), through a TorchTrainer with
more (DDP).

    grid = run_search(cfg, folds, space, corpus, paths)     # resume=True continues a killed one

What the trials did and which one each search selects: `turbo_ray.trials`.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import ray.tune
from ray.tune import Callback, TuneConfig, Tuner
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from turbo_ray.checkpoints import retention
from turbo_ray.config import Config, override
from turbo_ray.data.corpus import Corpus
from turbo_ray.data.folds import FINAL, Fold, fold_splits
from turbo_ray.data.pipeline import feed_cpus
from turbo_ray.paths import RunPaths, write_text
from turbo_ray.runners import build_trainer, device_of, trial_context, worker_resources
from turbo_ray.runtime import DRIVER_RESOURCE
from turbo_ray.search_space import SearchSpace
from turbo_ray.train import fit, loop_config
from turbo_ray.trials import FOLD, FOLD_TRIAL, SearchKey, searched, trial_config


class NestedSearch(Searcher):
    """One independent TPE search per `SearchKey` (loss mode, training seed, outer fold), all in
    one Tune experiment, so that the searches share the cluster. Each search tunes the parameters
    its mode reads (`SearchSpace.for_mode`) with the same number of trials. A search runs one
    trial at a time: its TPE proposes each trial knowing every earlier trial's result, and its
    ASHA sees them in launch order, so the same seed gives the same search whatever the machine's
    speed; the searches run side by side. Each new trial goes to the free search with the fewest
    trials so far; its config carries its search (`SearchKey.config`: the test session it must
    never see among them) and `fold_trial` (its launch order in the search). Results reach only
    that search's TPE; a failed trial is told to it when a resumed run completes it."""

    def __init__(
        self, keys: list[SearchKey], space: SearchSpace, trials_per_search: int, metric: str
    ):
        super().__init__(metric=metric, mode="max")
        self.trials_per_search = trials_per_search
        self.searchers = {key: _tpe(space.for_mode(key.mode), key, metric) for key in keys}
        self.search_of: dict[str, SearchKey] = {}  # the trials this searcher proposed
        self.running: dict[SearchKey, str] = {}  # search → its running trial

    def suggest(self, trial_id: str) -> dict | str | None:
        counts = {k: list(self.search_of.values()).count(k) for k in self.searchers}
        unfinished = [k for k, n in counts.items() if n < self.trials_per_search]
        if not unfinished:
            return Searcher.FINISHED
        free = [k for k in unfinished if k not in self.running]
        if not free:
            return None  # asked again when a trial ends
        key = min(free, key=lambda k: counts[k])  # the first of the least searched
        params = self.searchers[key].suggest(trial_id)
        if not isinstance(params, dict):
            return params
        self.search_of[trial_id] = key
        self.running[key] = trial_id
        return params | key.config() | {FOLD_TRIAL: counts[key]}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.search_of:
            self.searchers[self.search_of[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """A finished (or ASHA-stopped) trial's best score goes to its search's TPE. Its search
        is read from its config (Tune's state and this searcher's are saved apart: a restored
        experiment can hold a trial this searcher never proposed; its result is added as an
        evaluated point). A failed trial frees its search but is not told as failed: Optuna would
        drop the completion of the resumed run."""
        config = (result or {}).get("config") or {}
        key = SearchKey.of(config) if FOLD in config else self.search_of.get(trial_id)
        if key is None:
            return  # failed before reporting, and never proposed by this searcher
        if self.running.get(key) == trial_id:
            del self.running[key]
        if error or not result or self.metric not in result:
            return
        if trial_id in self.search_of:
            self.searchers[key].on_trial_complete(trial_id, result)
        else:
            self.searchers[key].add_evaluated_point(searched(config), result[self.metric])

    def save(self, checkpoint_path: str) -> None:
        states = {}
        with tempfile.TemporaryDirectory() as tmp:
            for i, (key, searcher) in enumerate(self.searchers.items()):
                searcher.save(f"{tmp}/{i}")
                states[key] = Path(f"{tmp}/{i}").read_bytes()
        state = {"search_of": self.search_of, "running": self.running, "states": states}
        Path(checkpoint_path).write_bytes(pickle.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        saved = pickle.loads(Path(checkpoint_path).read_bytes())
        self.search_of, self.running = saved["search_of"], saved["running"]
        with tempfile.TemporaryDirectory() as tmp:
            for i, (key, state) in enumerate(saved["states"].items()):
                Path(f"{tmp}/{i}").write_bytes(state)
                self.searchers[key].restore(f"{tmp}/{i}")


def _tpe(space: SearchSpace, key: SearchKey, metric: str) -> OptunaSearch:
    """One search's TPE over `space`, seeded by `sampler_seed`, evaluating its start points
    first."""
    return OptunaSearch(
        space=OptunaSearch.convert_search_space({p.key: p.domain() for p in space.params}),
        metric=metric,
        mode="max",
        seed=sampler_seed(key.seed, key.fold),
        points_to_evaluate=copy.deepcopy(space.start) or None,
    )


def search_keys(cfg: Config, folds: list[int]) -> list[SearchKey]:
    """The job's searches: every outer fold for every mode and seed (`tune.modes`, `tune.seeds`;
    by default `loss.mode` and `train.seed` alone), and with `tune.final` the final model's
    (`loss.mode`, `train.seed`, fold `FINAL`)."""
    modes, seeds = cfg.tune.modes or [cfg.loss.mode], cfg.tune.seeds or [cfg.train.seed]
    keys = [SearchKey(mode, seed, fold) for mode in modes for seed in seeds for fold in folds]
    return keys + ([SearchKey(cfg.loss.mode, cfg.train.seed, FINAL)] if cfg.tune.final else [])


def search_record(space: SearchSpace, cfg: Config, keys: list[SearchKey]) -> dict:
    """What selected each search's config, for results.json: the space, its start points, what
    each mode searched of it, the trials per search and each search's TPE seed. Checks first that
    every mode has something to search."""
    modes = dict.fromkeys(key.mode for key in keys)
    return space.record() | {
        "searched_per_mode": {m: [p.key for p in space.for_mode(m).params] for m in modes},
        "trials_per_search": cfg.tune.num_samples,
        "sampler_seeds": {
            RunPaths.run_name(*key): sampler_seed(key.seed, key.fold) for key in keys
        },
    }


def sampler_seed(seed: int, fold: int) -> int:
    """The seed of the TPE sampler of a search (`results.json` records it): distinct for every
    training seed and fold (< 1000), shared by the modes of one seed and fold."""
    return 1000 * seed + fold


class NestedASHA(FIFOScheduler):
    """ASHA per search: a trial competes only with its own search's trials."""

    def __init__(self, keys: list[SearchKey], **asha: Any):
        super().__init__()
        self.ashas = {key: ASHAScheduler(**asha) for key in keys}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        done = [a.set_search_properties(metric, mode, **spec) for a in self.ashas.values()]
        return all(done)

    def _asha(self, trial) -> ASHAScheduler:
        return self.ashas[SearchKey.of(trial.config)]

    def on_trial_add(self, tune_controller, trial):
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self._asha(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self._asha(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{key}: {a.debug_string()}" for key, a in self.ashas.items())


class SchedulerState(Callback):
    """Keeps a `NestedASHA`'s rungs in Tune's own experiment state. `Tuner.restore` brings back the
    trials, the searcher and the callbacks' states, not the scheduler's; Tune saves this callback's
    state with its own, wherever the experiment is stored (an `s3://` storage path too), and
    restores it before the restored trials are added, so a resumed driver, on any machine, continues
    every search's ASHA where it stopped."""

    def __init__(self, scheduler: NestedASHA):
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
    cfg = trial_config(Config.from_dict(base), params)
    split_ids, trial = splits[fold], ray.tune.get_context().get_trial_id()
    write_text(paths.trial_utterances(trial), json.dumps({"fold": fold, **split_ids}))
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
    """One Tune experiment holding an independent search per mode, seed and fold of `folds`
    (`search_keys`; `NestedSearch`, `NestedASHA`): each fold's trials train and validate on the
    other sessions only (with `tune.final`, the `FINAL` fold's on all of them). TPE and ASHA are
    told each trial's best validation score so far (`best_<tune.metric>`: the score that
    selects). Tune's state (ASHA's rungs included) and a folder per trial go to `paths.search`.
    `resume` continues an interrupted search (a finished one returns its results, training
    nothing). `callbacks`: Tune callbacks, e.g. progress lines (Tune's own output is off)."""
    # Tune's own tables and hints off (`verbose=0` silences only its legacy reporter): the job
    # prints its progress through `callbacks`
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    splits = {fold.test_session: fold_splits(fold) for fold in folds}
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
    outer = [k for k in splits if k != FINAL]
    t, keys, in_trial = cfg.tune, search_keys(cfg, outer), trains_in_trial(cfg)
    score = f"best_{t.metric}"  # a trial's best epoch so far: the score that selects its config
    asha = NestedASHA(
        keys,
        metric=score,
        mode="max",
        time_attr="epoch",
        max_t=cfg.train.epochs,
        grace_period=t.grace_period,
        reduction_factor=t.reduction_factor,
    )
    tuner = Tuner(
        trainable,
        tune_config=TuneConfig(  # each search's space is its TPE's (`NestedSearch`)
            search_alg=NestedSearch(keys, space, t.num_samples, score),
            scheduler=asha,
            num_samples=t.num_samples * len(keys),
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
            checkpoint_config=ray.tune.CheckpointConfig(**retention(cfg)),
            # a trial that trains in its process is restarted by Tune (a TorchTrainer by Train)
            failure_config=ray.tune.FailureConfig(
                max_failures=cfg.train.max_failures if in_trial else 0
            ),
            verbose=0,
        ),
    )
    return tuner.fit()
