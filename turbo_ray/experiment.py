"""Whole jobs, for both protocols: check the output folder, prepare the corpus, start or join Ray,
save the config, train, test each fold's selected checkpoint once, write every result file, track
in MLflow, prune the checkpoints no result came from. The command line only parses and prints.

    result = run_nested(load_config("experiments/configs/iemocap.yaml"))   # the main job
    result = run_fixed(cfg, modes=["baseline", "turbo"], seeds=[0, 1, 2])  # one config, no search
    print(result.table())        # one row per fold (and mode and seed), mean and std

The nested protocol: per outer fold k, a search (TPE + ASHA) trains and validates on the other
sessions only, and fold k's test score is that of the checkpoint its own search selected (best
trial, best epoch). The fixed protocol: one given config per mode and seed, a Train run per fold,
tested at its best validation epoch. Session k's utterances never touch fold k's selection.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import ray.train
import ray.tune
import yaml

from turbo_ray.checkpoints import (
    checkpoint_at,
    export_checkpoint,
    prune_checkpoints,
    selected_epoch,
)
from turbo_ray.comparison import compared_with_baseline, format_comparison
from turbo_ray.config import MODES, Config, check_settings, load_config, override
from turbo_ray.data.corpus import Corpus, prepare_corpus
from turbo_ray.data.folds import FINAL, Fold, fold_splits
from turbo_ray.errors import ConfigError, UsageError
from turbo_ray.evaluation import tested_row
from turbo_ray.paths import (
    RunPaths,
    is_uri,
    latest_output_dir,
    new_output_dir,
    read_text,
    write_text,
)
from turbo_ray.progress import SearchProgress, ray_logs_in
from turbo_ray.results import counted, format_table, selection_table, write_results
from turbo_ray.runners import build_trainer
from turbo_ray.runtime import init_ray, require_driver_resource, running_ray
from turbo_ray.search_space import load_search_space
from turbo_ray.tracking import Tracker
from turbo_ray.trials import (
    SearchKey,
    best_trials,
    failed_trials,
    not_comparable,
    searched,
    trial_config,
    trial_id,
    write_search_outputs,
)
from turbo_ray.tune import run_search, search_keys, search_record, trains_in_trial


def protocol(corpus: Corpus, nested: bool) -> str:
    """How results.json and MLflow name a job's protocol: its outer folds (`loso`, `logo`,
    `group-kfold`, `split`), "nested-" where each fold's config was searched."""
    return f"nested-{corpus.outer.kind}" if nested else corpus.outer.kind


@dataclass(frozen=True)
class JobResult:
    """A finished job: its rows (one per tested fold, and mode and seed), files and tracker."""

    nested: bool  # each fold's config searched (the main job), or one given config
    cfg: Config
    paths: RunPaths
    corpus: Corpus
    rows: pd.DataFrame
    by: list[str] | None  # the columns that group the rows (None: one run)
    files: list[Path]
    tracker: Tracker
    joined: bool  # ran on a Ray that outlives the job (its dashboard stays)
    comparison: pd.DataFrame | None  # each mode against the baseline, paired (`comparison.py`)
    model: Path | None = None  # the final model's folder (`tune.final`)
    search: dict | None = None  # what selected each search's config (the main job)

    @property
    def protocol(self) -> str:
        return protocol(self.corpus, self.nested)

    def table(self) -> str:
        """The test scores per fold, with mean and std (per group); the folds run, where fewer
        than the corpus has."""
        run, every = self.rows["test_session"].nunique(), len(self.corpus.outer.groups)
        some = f", {run} of its {every} folds" if run < every else ""
        if self.nested:
            title = (
                f"Nested {self.corpus.outer.title} ({self.protocol}{some}): test scores of each "
                f"fold's selected checkpoint, {self.corpus.label}"
            )
        else:
            title = (
                f"Test scores of the best-val epoch ({self.protocol}{some}), {self.corpus.label}"
            )
        return format_table(self.rows, title, self.by)

    def selection(self) -> str:
        """What each search selected (nested protocol only), and whether a trial failed."""
        caveat = not_comparable(self.search["failed_trials"])
        return selection_table(self.rows, self.cfg, self.by) + (f"\n{caveat}" if caveat else "")

    def compared(self) -> str | None:
        """Each mode against the baseline, paired over folds and seeds (None: no baseline run)."""
        if self.comparison is None:
            return None
        seeds = ",".join(str(s) for s in sorted(self.rows["seed"].unique()))
        folds = self.rows["test_session"].nunique()
        if self.nested:
            how = f"a search per mode and fold, {counted(self.cfg.tune.num_samples, 'trial')} each"
        else:
            how = "one fixed config for all modes"
        title = (
            f"Paired comparison with the baseline ({self.protocol}, {how}, "
            f"{self.cfg.train.epochs} epochs; seeds {seeds}; "
            f"{counted(folds, 'fold')}), {self.corpus.label}"
        )
        return format_comparison(self.comparison, title)


def run_nested(
    cfg: Config, out: Path | None = None, resume: bool = False, address: str | None = None
) -> JobResult:
    """The main job: a search per outer fold (each, or the first `tune.folds`), each fold's
    selected checkpoint tested on its held-out session; once per mode and seed of `tune.modes` and
    `tune.seeds`, with equal budgets, compared with the baseline if it ran. `out`: the output
    folder (default: a new runs/tune-<time>; with `resume`, the newest one); `resume` continues
    the job there with its own saved config (a finished job trains nothing); `address`: a Ray
    cluster to join."""
    cfg, paths = open_job("tune", cfg, out, resume)
    space = load_search_space(cfg.tune.search_space)
    corpus = prepare(cfg)
    folds = {fold.test_session: fold for fold in corpus.folds(cfg.data)[: cfg.tune.folds]}
    keys = search_keys(cfg, list(folds))
    if cfg.tune.final:
        folds[FINAL] = corpus.final_fold(cfg.data)
    search = search_record(space, cfg, keys)  # checks that every mode has something to search
    with ray_logs_in(paths.ray_log):
        joined = start_ray(cfg, paths, address, resume, drives_trainers=not trains_in_trial(cfg))
        print(describe_searches(cfg, keys, corpus))
        tracker = Tracker.open(cfg, paths, protocol(corpus, nested=True), corpus.label)
        total = len(keys) * cfg.tune.num_samples
        progress = SearchProgress(total, cfg.tune.metric, cfg.train.epochs)
        # a job whose searches all ended (each tested) trains nothing more: a failed trial is
        # listed, not retried (it could outscore the trial its search's test score came from)
        tested_all = all(read_text(paths.test_record(*k)) for k in keys if k.fold != FINAL)
        ended = tested_all and (not cfg.tune.final or paths.model_dir.exists())
        grid = run_search(
            cfg, list(folds.values()), space, corpus, paths, resume, [progress], not ended
        )
        tracker.log_trials(grid, cfg)
        files = write_search_outputs(grid, space, cfg, paths)
        search["failed_trials"] = failed_trials(grid)
        selected = best_trials(grid, cfg)
        outer = [key for key in keys if key.fold != FINAL]
        rows = [tested(cfg, corpus, folds[key.fold], key, selected[key], paths) for key in outer]
        model = export_final(cfg, selected, paths) if cfg.tune.final else None
        prune(cfg, paths, paths.search, rows)
        by = ["mode"] if len(outer) > len(folds) - cfg.tune.final else None
        return finish(True, cfg, corpus, paths, rows, files, tracker, joined, by, search, model)


def export_final(cfg: Config, selected: dict, paths: RunPaths) -> Path:
    """The final search's selected checkpoint as a model folder (<out>/model), once: a resumed
    job finds it there (written whole or not at all)."""
    (key,) = [key for key in selected if key.fold == FINAL]
    if not paths.model_dir.exists():
        trial = selected[key]
        export_selected(trial_run(trial, cfg, paths), trial, cfg, paths.model_dir)
    return paths.model_dir


def export_selected(run, result, cfg: Config, out: Path) -> Path:
    """The checkpoint of `run` at `result`'s best validation epoch (the rule that selects
    everywhere) as a model folder at `out`."""
    checkpoint, _ = checkpoint_at(run, selected_epoch(result, cfg.tune.metric))
    with checkpoint.as_directory() as directory:
        return export_checkpoint(directory, out)


def run_final(cfg: Config, out: Path | None = None, address: str | None = None) -> Path:
    """The final model of one given config (`turbo-ray train --final`): a Train run on all of the
    corpus (validation carved as in the folds), its best validation epoch exported to
    <out>/model. It has no test score of its own: the folds' scores of the same config are its
    estimate. Returns the model folder."""
    cfg, paths = open_job("train", cfg, out, resume=False)
    corpus = prepare(cfg)
    fold = corpus.final_fold(cfg.data)
    with ray_logs_in(paths.ray_log):
        start_ray(cfg, paths, address)
        run_cfg = override(cfg, {"train.storage_path": paths.checkpoints})
        name = paths.run_name(cfg.loss.mode, cfg.train.seed, FINAL)
        run = build_trainer(run_cfg, corpus.shards, fold_splits(fold), corpus.classes, name).fit()
        export_selected(run, run, cfg, paths.model_dir)
    prune(cfg, paths, paths.checkpoints, [])  # its weights are in the model folder
    return paths.model_dir


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
    cfg: Config,
    out: Path | None = None,
    modes: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    sessions: Sequence[int] | None = None,
    address: str | None = None,
) -> JobResult:
    """One given config over the leave-one-session-out folds that test `sessions` (default: all),
    once per loss mode and training seed (default: the config's `loss.mode` and `train.seed`): a
    Train run per fold, tested at its best validation epoch. `out`: the output folder (default: a
    new runs/train-<time>)."""
    check_settings("--mode", modes)
    check_settings("--seeds", seeds, seeds=True)
    modes, seeds = modes or [cfg.loss.mode], seeds or [cfg.train.seed]
    if bad := [m for m in modes if m not in MODES]:
        raise ConfigError(f"--mode {bad} not in {MODES}")
    cfg, paths = open_job("train", cfg, out, resume=False)
    corpus = prepare(cfg)
    folds = [f for f in corpus.folds(cfg.data) if sessions is None or f.test_session in sessions]
    if not folds:
        raise ConfigError(f"no LOSO fold tests session(s) {sessions} in {corpus.label}")
    with ray_logs_in(paths.ray_log):
        joined = start_ray(cfg, paths, address)
        tracker = Tracker.open(cfg, paths, protocol(corpus, nested=False), corpus.label)
        rows = []
        for mode in modes:
            for seed in seeds:
                setting = {"loss.mode": mode, "train.seed": seed}
                run_cfg = override(cfg, setting | {"train.storage_path": paths.checkpoints})
                for fold in folds:
                    run = paths.run_name(mode, seed, fold.test_session)
                    row = fixed_fold(run_cfg, corpus, fold, run, paths)
                    rows.append(row | {"mode": mode, "seed": seed})
        prune(cfg, paths, paths.checkpoints, rows)
        by = ["mode"] if len(modes) > 1 or len(seeds) > 1 else None
        return finish(False, cfg, corpus, paths, rows, [], tracker, joined, by=by)


def fixed_fold(cfg: Config, corpus: Corpus, fold: Fold, name: str, paths: RunPaths) -> dict:
    """Train one fold as the Train run `name`, then test its best validation epoch's
    checkpoint."""
    trainer = build_trainer(cfg, corpus.shards, fold_splits(fold), corpus.classes, name)
    run = trainer.fit()
    checkpoint, metrics = checkpoint_at(run, selected_epoch(run, cfg.tune.metric))
    row = tested_row(cfg, corpus, fold, checkpoint, metrics)
    return row | {"checkpoint": paths.relative(checkpoint.path)}


def tested(
    cfg: Config,
    corpus: Corpus,
    fold: Fold,
    key: SearchKey,
    trial: ray.tune.Result,
    paths: RunPaths,
) -> dict:
    """A search's row from its selected trial: recorded in the job's storage once tested (a
    resumed job, on any machine, reads it back: its checkpoints may be pruned by then)."""
    record = paths.test_record(*key)
    chosen = (trial_id(trial), selected_epoch(trial, cfg.tune.metric))
    if (text := read_text(record)) is not None:
        row = json.loads(text)
    else:
        checkpoint, metrics = checkpoint_at(trial_run(trial, cfg, paths), chosen[1])
        seen = pd.concat([fold.train, fold.val])  # what its search trained and validated on
        # the leak audit: the outer folds (or, given splits, the splits) its search read
        used = (
            {"search_splits": sorted(seen.split.unique())}
            if corpus.outer.kind == "split"
            else {"search_sessions": sorted(int(s) for s in seen.session.unique())}
        )
        selection = used | {"trial": chosen[0], "params": searched(trial.config)}
        run_cfg = trial_config(cfg, trial.config)
        row = tested_row(run_cfg, corpus, fold, checkpoint, metrics, **selection)
        row |= {"mode": key.mode, "seed": key.seed, "checkpoint": paths.relative(checkpoint.path)}
        write_text(record, json.dumps(row))
    if (row["trial"], row["best_epoch"]) != chosen:
        raise RuntimeError(
            f"{record} tested {row['trial']} epoch {row['best_epoch']}, "
            f"but the search {key} selected {chosen}"
        )
    return row


def trial_run(trial: ray.tune.Result, cfg: Config, paths: RunPaths):
    """The run that kept a trial's checkpoints, with their epochs' metrics: the Tune trial itself
    when it trained in its own process, else its TorchTrainer's run (in the trial's folder)."""
    if trains_in_trial(trial_config(cfg, trial.config)):
        return trial
    return ray.train.Result.from_path(paths.trial_dir(trial_id(trial)))


def prune(cfg: Config, paths: RunPaths, storage: str, rows: list[dict]) -> None:
    """Unless `train.keep_checkpoints`, keep under `storage` only the weights of the checkpoints
    tested (`rows`, their paths relative to the job's storage)."""
    if not cfg.train.keep_checkpoints:
        prune_checkpoints(storage, {paths.located(row["checkpoint"]) for row in rows})


def finish(
    nested: bool,
    cfg: Config,
    corpus: Corpus,
    paths: RunPaths,
    rows: list[dict],
    files: list[Path],
    tracker: Tracker,
    joined: bool,
    by: list[str] | None = None,
    search: dict | None = None,
    model: Path | None = None,
) -> JobResult:
    """Compare the modes (if the job ran the baseline and another), write the results files, log
    the folds and close the experiment's MLflow run."""
    table = pd.DataFrame(rows)
    classes = list(corpus.classes)
    comparison = compared_with_baseline(table)
    name = protocol(corpus, nested)
    run = sorted(int(k) for k in table["test_session"].unique())  # the folds tested
    setup = {"protocol": name, "outer_folds": corpus.outer.record() | {"run": run}} | (
        {"search": search} if search else {}
    )
    files = files + write_results(table, paths, classes, cfg, setup, by, comparison)
    tracker.log_folds(table, cfg, classes)
    tracker.finish(table, files, by, comparison)
    return JobResult(
        nested, cfg, paths, corpus, table, by, files, tracker, joined, comparison, model, search
    )


def open_job(job: str, cfg: Config, out: Path | None, resume: bool) -> tuple[Config, RunPaths]:
    """The job's config and places. A new job needs a folder that holds no experiment; a resumed
    one, the folder of one (or its config, fetched from `train.storage_path` where that is a URI),
    and runs with that experiment's own config."""
    if resume:
        out = out or latest_output_dir(job)
        if out is None:
            raise UsageError(f"--resume: no runs/{job}-* experiment here; pass --output-dir DIR")
        fetch_stored_config(Path(out).resolve(), cfg)
    out = Path(out or new_output_dir(job)).resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {out} is a file, not a folder")
    holds_experiment = (out / RunPaths.CONFIG).is_file()
    if resume and not holds_experiment:
        raise UsageError(
            f"--resume: {out} holds no experiment (no {RunPaths.CONFIG}); to resume from object "
            f"storage alone, pass the same --output-dir name and train.storage_path=<URI>"
        )
    if not resume and holds_experiment:
        raise UsageError(
            f"{out} already holds an experiment: pass --resume, or another --output-dir"
        )
    cfg = load_config(out / RunPaths.CONFIG) if resume else anchored(cfg)
    return cfg, RunPaths.of(out, cfg.train.storage_path)


def anchored(cfg: Config) -> Config:
    """The data's local paths made absolute where the job starts: a trial's process runs in a
    folder of Ray's (URIs and `~/…` stay as they are)."""
    data = cfg.data
    relative = {
        f"data.{key}": str(Path(value).resolve())
        for key in ("data_dir", "cache_dir", "shards_dir")
        if (value := getattr(data, key))
        and not is_uri(value)
        and not Path(value).expanduser().is_absolute()
    }
    return override(cfg, relative)


def fetch_stored_config(out: Path, given: Config) -> None:
    """--resume where the output folder is gone (another machine, a deleted folder): with
    `train.storage_path=<URI>` given, the config the job stored there is fetched into `out`."""
    stored = RunPaths.of(out, given.train.storage_path).stored_config
    if (out / RunPaths.CONFIG).is_file() or not stored or (text := read_text(stored)) is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / RunPaths.CONFIG).write_text(text)
    print(f"config fetched from {stored}")


def prepare(cfg: Config) -> Corpus:
    """The corpus, its report printed and its folds checked (every split non-empty)."""
    corpus = prepare_corpus(cfg.data)
    print(corpus.summary())
    corpus.folds(cfg.data)
    return corpus


def start_ray(
    cfg: Config,
    paths: RunPaths,
    address: str | None,
    resume: bool = False,
    drives_trainers: bool = False,
) -> bool:
    """Start or join Ray and check it (`drives_trainers`: the job's trials drive TorchTrainers),
    and only then save the job's config, so that a Ray that cannot run the job leaves the folder
    free for the same command. Returns whether the job joined a Ray that outlives it."""
    print(f"experiment {paths.out}{'  (resumed)' if resume else ''}")
    print(f"Ray's own log: {paths.ray_log}")
    running = None if address else running_ray()
    if running:
        print(f"joining the Ray already running here at {running} (--address picks another)")
    if dashboard := init_ray(address):
        print(f"Ray dashboard: {dashboard}  (trials, workers, CPU/GPU and memory use)")
    if drives_trainers:
        require_driver_resource()
    if not resume:
        paths.config.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if paths.stored_config:
            write_text(paths.stored_config, paths.config.read_text())
    return bool(address or running)
