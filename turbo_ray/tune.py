"""Ray Tune: one search per outer LOSO fold, Optuna (TPE) proposes, ASHA stops early, each trial
trains on its fold's training sessions: inside its own process with one worker (processes are
reused from trial to trial), through a TorchTrainer with more (DDP).

    grid = run_search(cfg, folds, space, corpus, paths)     # resume=True continues a killed one

What the trials did and which one each fold selects: `turbo_ray.trials`.
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
from turbo_ray.data.folds import Fold, fold_splits
from turbo_ray.data.pipeline import feed_cpus
from turbo_ray.paths import RunPaths, write_text
from turbo_ray.runners import build_trainer, device_of, trial_context, worker_resources
from turbo_ray.runtime import DRIVER_RESOURCE
from turbo_ray.search_space import SearchSpace
from turbo_ray.train import fit, loop_config
from turbo_ray.trials import FOLD, FOLD_TRIAL, searched


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
        return params | {FOLD: fold, FOLD_TRIAL: counts[fold]}

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
    return space.record() | {
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
    """One Tune experiment holding an independent search per fold (`FoldSearch`, `FoldASHA`): each
    fold's trials train and validate on the other sessions only. TPE and ASHA are told each trial's
    best validation score so far (`best_<tune.metric>`: the score that selects). Tune's state
    (ASHA's rungs included) and a folder per trial go to `paths.search`. `resume` continues an
    interrupted search (a finished one returns its results, training nothing). `callbacks`: Tune
    callbacks, e.g. progress lines (Tune's own output is off)."""
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
            checkpoint_config=ray.tune.CheckpointConfig(**retention(cfg)),
            # a trial that trains in its process is restarted by Tune (a TorchTrainer by Train)
            failure_config=ray.tune.FailureConfig(
                max_failures=cfg.train.max_failures if in_trial else 0
            ),
            verbose=0,
        ),
    )
    return tuner.fit()
