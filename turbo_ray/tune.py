"""Ray Tune: one search per outer fold (and loss mode and training seed), Optuna (TPE)
proposes, ASHA stops early, each trial trains on its fold's training split: inside its own
process with one worker (processes are reused from trial to trial), through a TorchTrainer with
more (DDP).

    grid = run_search(cfg, folds, space, corpus, paths)     # resume=True continues a killed one

What the trials did and which one each search selects: `turbo_ray.trials`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray.tune
from ray.tune import TuneConfig, Tuner
from ray.tune.integration.ray_train import TuneReportCallback

from turbo_ray.checkpoints import retention
from turbo_ray.config import Config, override
from turbo_ray.data.corpus import Corpus
from turbo_ray.data.folds import FINAL, Fold, fold_splits
from turbo_ray.data.pipeline import feed_cpus
from turbo_ray.paths import RunPaths, write_text
from turbo_ray.runners import build_trainer, device_of, trial_context, worker_resources
from turbo_ray.runtime import DRIVER_RESOURCE
from turbo_ray.search_space import SearchSpace
from turbo_ray.searchers import NestedASHA, NestedSearch, SchedulerState, sampler_seed
from turbo_ray.train import fit, loop_config
from turbo_ray.trials import FOLD, SearchKey, trial_config


def search_keys(cfg: Config, folds: list[int]) -> list[SearchKey]:
    """The job's searches: every outer fold for every mode and seed (`tune.modes`, `tune.seeds`;
    by default `loss.mode` and `train.seed` alone), and with `tune.final` the final model's
    (`loss.mode`, `train.seed`, fold `FINAL`)."""
    modes, seeds = cfg.tune.modes or [cfg.loss.mode], cfg.tune.seeds or [cfg.train.seed]
    keys = [SearchKey(mode, seed, fold) for mode in modes for seed in seeds for fold in folds]
    return keys + ([SearchKey(cfg.loss.mode, cfg.train.seed, FINAL)] if cfg.tune.final else [])


def search_record(space: SearchSpace, cfg: Config, keys: list[SearchKey]) -> dict:
    """What selected each search's config, for results.json: the space, its start points, what
    each mode searched of it, the trials per search (and at once) and each search's TPE seed.
    Checks first that every mode has something to search."""
    modes = dict.fromkeys(key.mode for key in keys)
    return space.record() | {
        "searched_per_mode": {m: [p.key for p in space.for_mode(m).params] for m in modes},
        "trials_per_search": cfg.tune.num_samples,
        "trials_at_once": cfg.tune.trials_at_once,
        "sampler_seeds": {
            RunPaths.run_name(*key): sampler_seed(key.seed, key.fold) for key in keys
        },
    }


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
    retry_failed: bool = True,
) -> ray.tune.ResultGrid:
    """One Tune experiment holding an independent search per mode, seed and fold of `folds`
    (`search_keys`; `NestedSearch`, `NestedASHA`): each fold's trials train and validate on the
    other outer folds only (with `tune.final`, the `FINAL` fold's on all of them). TPE and ASHA are
    told each trial's best validation score so far (`best_<tune.metric>`: the score that
    selects). Tune's state (ASHA's rungs included) and a folder per trial go to `paths.search`.
    `resume` continues an interrupted search (a finished one returns its results, training
    nothing), its failed trials run again unless not `retry_failed`. `callbacks`: Tune
    callbacks, e.g. progress lines (Tune's own output is off)."""
    # Tune's own tables and hints off (`verbose=0` silences only its legacy reporter): the job
    # prints its progress through `callbacks`
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    splits = {fold.number: fold_splits(fold) for fold in folds}
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
        tuner = Tuner.restore(
            paths.search, trainable, resume_unfinished=True, resume_errored=retry_failed
        )
        with pending_trials(cfg.tune.max_concurrent_trials):
            return with_configs(tuner.fit())
    # a new search; or resuming a job killed before Tune first saved its state: nothing to keep
    tuner = new_tuner(cfg, trainable, [k for k in splits if k != FINAL], space, paths, callbacks)
    with pending_trials(cfg.tune.max_concurrent_trials):
        return with_configs(tuner.fit())


def new_tuner(
    cfg: Config,
    trainable,
    outer: list[int],
    space: SearchSpace,
    paths: RunPaths,
    callbacks: list | None,
) -> Tuner:
    """The Tune experiment of a new search: `NestedSearch` proposes, `NestedASHA` stops, both
    per search of `search_keys(cfg, outer)`, both on a trial's best epoch so far."""
    t, keys, in_trial = cfg.tune, search_keys(cfg, outer), trains_in_trial(cfg)
    score = f"best_{t.metric}"  # a trial's best epoch so far: the score that selects its config
    asha = NestedASHA(
        keys,
        metric=score,
        max_t=cfg.train.epochs,
        grace_period=t.grace_period,
        reduction_factor=t.reduction_factor,
    )
    searcher = NestedSearch(
        keys, space, t.num_samples, score, t.trials_at_once, t.max_concurrent_trials
    )
    return Tuner(
        trainable,
        tune_config=TuneConfig(  # each search's space is its TPE's (`NestedSearch`)
            search_alg=searcher,
            scheduler=asha,
            num_samples=t.num_samples * len(keys),
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


def with_configs(grid: ray.tune.ResultGrid) -> ray.tune.ResultGrid:
    """Every result with its trial's config: a restored trial that failed before it reported has
    none in Tune's records but its `params.json`."""
    for result in grid:
        if result.config is None:
            with result.filesystem.open_input_stream(f"{result.path}/params.json") as f:
                result.metrics = (result.metrics or {}) | {"config": json.loads(f.read())}
    return grid


@contextmanager
def pending_trials(n: int) -> Iterator[None]:
    """Within: Tune creates up to `n` trials ahead of free resources (an autoscaler sees their
    placement groups), as it does for a searcher wrapped in its `ConcurrencyLimiter` (one that
    limits its own concurrency, as `NestedSearch` does, gets 1). A value the user set is kept."""
    name = "TUNE_MAX_PENDING_TRIALS_PG"
    if name in os.environ:
        yield
        return
    os.environ[name] = str(n)
    try:
        yield
    finally:
        del os.environ[name]
