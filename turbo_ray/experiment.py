"""The protocols, each a whole job (its lifecycle in `job.py`); the command line only parses and
prints.

    result = run_nested(load_config("experiments/configs/iemocap.yaml"))   # the main job
    result = run_fixed(override(cfg, {"tune.modes": ["baseline", "turbo"]}))  # no search
    print(result.table())        # one row per fold (and mode and seed), mean and std

The nested protocol: per outer fold k, a search (TPE + ASHA) trains and validates on the other
folds only, and fold k's test score is that of the checkpoint its own search selected (best trial,
best epoch). The fixed protocol: one given config per mode and seed, a Train run per fold, tested
at its best validation epoch. Fold k's test utterances never touch fold k's selection. Both run
once per mode and seed of `tune.modes` and `tune.seeds`, over the first `tune.folds` outer folds,
and with `tune.final` also give a final model trained on all of the corpus.
"""

from __future__ import annotations

from pathlib import Path

from turbo_ray.checkpoints import checkpoint_at, selected_epoch
from turbo_ray.classifier import export_checkpoint
from turbo_ray.config import Config, override
from turbo_ray.data.corpus import Corpus
from turbo_ray.data.folds import FINAL, Fold, fold_splits
from turbo_ray.errors import ConfigError
from turbo_ray.evaluation import checkpointed_run, recorded_test_row, tested_row
from turbo_ray.formatting import counted
from turbo_ray.job import Job, JobResult
from turbo_ray.paths import RunPaths, read_text
from turbo_ray.progress import SearchProgress
from turbo_ray.results import write_search_outputs
from turbo_ray.runners import build_trainer
from turbo_ray.search_space import load_search_space
from turbo_ray.trials import ONE_RUN, SearchKey, best_trials, failed_trials
from turbo_ray.tune import run_search, search_keys, search_record, trains_in_trial


def run_nested(
    cfg: Config, out: Path | None = None, resume: bool = False, address: str | None = None
) -> JobResult:
    """The main job: a search per outer fold, each fold's selected checkpoint tested on its
    held-out fold, for every mode and seed, with equal budgets, compared with the baseline if it
    ran. `out`: the output folder (default: a new runs/tune-<time>; with `resume`, the newest
    one); `resume` continues the job there with its own saved config (a finished job trains
    nothing); `address`: a Ray cluster to join."""
    job = Job.open("tune", cfg, out, resume)
    cfg, paths = job.cfg, job.paths
    space = load_search_space(cfg.tune.search_space)
    folds = {fold.number: fold for fold in job.corpus.folds(cfg.data)[: cfg.tune.folds]}
    keys = search_keys(cfg, list(folds))
    if cfg.tune.final:
        folds[FINAL] = job.corpus.final_fold(cfg.data)
    search = search_record(space, cfg, keys)  # checks that every mode has something to search
    with job.on_ray(address, drives_trainers=not trains_in_trial(cfg)):
        print(describe_searches(cfg, keys, job.corpus))
        progress = SearchProgress(
            len(keys) * cfg.tune.num_samples, cfg.tune.metric, cfg.train.epochs
        )
        grid = run_search(
            cfg,
            list(folds.values()),
            space,
            job.corpus,
            paths,
            resume,
            [progress],
            not ended(job, keys),
        )
        job.tracker.log_trials(grid, cfg)
        files = write_search_outputs(grid, space, cfg, paths)
        search["failed_trials"] = failed_trials(grid)
        selected = best_trials(grid, cfg)
        outer = [key for key in keys if key.fold != FINAL]
        rows = [
            recorded_test_row(cfg, job.corpus, folds[key.fold], key, selected[key], paths)
            for key in outer
        ]
        model = export_final(cfg, selected, paths) if cfg.tune.final else None
        job.prune(paths.search, rows)
        by = ["mode"] if len(outer) > len(folds) - cfg.tune.final else None
        return job.finish(rows, by, files, search, model)


def ended(job: Job, keys: list[SearchKey]) -> bool:
    """Whether every search of a (resumed) job has ended: each tested, the final model exported.
    Such a job trains nothing more: a failed trial is listed, not retried (it could outscore the
    trial its search's test score came from)."""
    outer = [key for key in keys if key.fold != FINAL]
    tested_all = all(read_text(job.paths.test_record(*key)) for key in outer)
    return tested_all and (not job.cfg.tune.final or job.paths.model_dir.exists())


def export_final(cfg: Config, selected: dict, paths: RunPaths) -> Path:
    """The final search's selected checkpoint as a model folder (<out>/model), once: a resumed
    job finds it there (written whole or not at all)."""
    (key,) = [key for key in selected if key.fold == FINAL]
    if not paths.model_dir.exists():
        trial = selected[key]
        export_selected(checkpointed_run(trial, cfg, paths), trial, cfg, paths.model_dir)
    return paths.model_dir


def export_selected(run, result, cfg: Config, out: Path) -> Path:
    """The checkpoint of `run` at `result`'s best validation epoch (the rule that selects
    everywhere) as a model folder at `out`."""
    checkpoint, _ = checkpoint_at(run, selected_epoch(result, cfg.tune.metric))
    with checkpoint.as_directory() as directory:
        return export_checkpoint(directory, out)


def describe_searches(cfg: Config, keys: list[SearchKey], corpus: Corpus) -> str:
    """The protocol and its budget, in a line (more when it compares modes or seeds, or searches
    a final model)."""
    keys = [key for key in keys if key.fold != FINAL]
    folds = sorted({key.fold for key in keys})
    line = (
        f"nested {corpus.outer.title} over {counted(len(folds), 'fold')}: per fold, "
        f"{cfg.tune.num_samples} trials (TPE + ASHA on each trial's best {cfg.tune.metric}) "
        "that never see the fold's test data"
    )
    if cfg.tune.final:
        line += (
            f"\nand a final search on all of the corpus ({cfg.loss.mode}, seed {cfg.train.seed}, "
            "the same budget): its selected model is exported, scored by the folds above"
        )
    if len(keys) == len(folds):
        return line
    modes = ",".join(dict.fromkeys(key.mode for key in keys))
    seeds = ",".join(str(s) for s in dict.fromkeys(key.seed for key in keys))
    return f"{line}\n{len(keys)} searches: modes {modes} x seeds {seeds} x folds, equal budgets"


def run_fixed(
    cfg: Config, out: Path | None = None, fold: int | None = None, address: str | None = None
) -> JobResult:
    """One given config over the outer folds (the first `tune.folds`; `fold`: that one alone),
    once per loss mode and training seed of `tune.modes` and `tune.seeds` (default: the config's
    `loss.mode` and `train.seed`): a Train run per fold, tested at its best validation epoch.
    With `tune.final`, then the config's final model: a Train run on all of the corpus
    (validation carved as in the folds), its best epoch exported to <out>/model, with no test
    score of its own (the folds' scores estimate it). `out`: the output folder (default: a new
    runs/train-<time>)."""
    job = Job.open("train", cfg, out)
    cfg, paths = job.cfg, job.paths
    folds = job.corpus.folds(cfg.data)[: cfg.tune.folds]
    if fold is not None:
        folds = [f for f in job.corpus.folds(cfg.data) if f.number == fold]
    if not folds:
        raise ConfigError(f"--fold {fold}: no outer fold {fold} in {job.corpus.label}")
    modes, seeds = cfg.tune.modes or [cfg.loss.mode], cfg.tune.seeds or [cfg.train.seed]
    with job.on_ray(address):
        rows = []
        for mode in modes:
            for seed in seeds:
                setting = {"loss.mode": mode, "train.seed": seed}
                run_cfg = override(
                    cfg, ONE_RUN | setting | {"train.storage_path": paths.checkpoints}
                )
                rows += [
                    fixed_fold(run_cfg, job.corpus, f, paths) | {"mode": mode, "seed": seed}
                    for f in folds
                ]
        model = train_final(cfg, job.corpus, paths) if cfg.tune.final else None
        job.prune(paths.checkpoints, rows)  # the final model's weights are in its folder
        by = ["mode"] if len(modes) > 1 or len(seeds) > 1 else None
        return job.finish(rows, by, model=model)


def fixed_fold(cfg: Config, corpus: Corpus, fold: Fold, paths: RunPaths) -> dict:
    """Train one fold as a Train run, then test its best validation epoch's checkpoint."""
    name = paths.run_name(cfg.loss.mode, cfg.train.seed, fold.number)
    run = build_trainer(cfg, corpus.shards, fold_splits(fold), corpus.classes, name).fit()
    checkpoint, metrics = checkpoint_at(run, selected_epoch(run, cfg.tune.metric))
    row = tested_row(cfg, corpus, fold, checkpoint, metrics)
    return row | {"checkpoint": paths.relative(checkpoint.path)}


def train_final(cfg: Config, corpus: Corpus, paths: RunPaths) -> Path:
    """The config's final model: a Train run on all of the corpus, its best validation epoch
    exported to <out>/model."""
    run_cfg = override(cfg, {"train.storage_path": paths.checkpoints})
    name = paths.run_name(cfg.loss.mode, cfg.train.seed, FINAL)
    fold = corpus.final_fold(cfg.data)
    run = build_trainer(run_cfg, corpus.shards, fold_splits(fold), corpus.classes, name).fit()
    return export_selected(run, run, cfg, paths.model_dir)
