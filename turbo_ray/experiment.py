"""The main job, nested leave-one-session-out: per outer fold k, a search (TPE + ASHA) trains and
validates on the other sessions only, and fold k's test score is that of the checkpoint its own
search selected (best trial, best epoch). Session k's utterances never touch fold k's selection.

    results, written = run_nested(cfg, corpus, space, paths, Tracker.open(cfg, paths, …))
    print(selection_table(results, cfg)); print(format_table(results, title))   # one row per fold
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import ray
import ray.train
import torch

from turbo_ray.config import Config, override
from turbo_ray.data.corpus import Corpus
from turbo_ray.data.iemocap import Fold
from turbo_ray.data.pipeline import collate_for, configure_ray_data, split_dataset
from turbo_ray.paths import RunPaths, read_text, write_text
from turbo_ray.tracking import Tracker
from turbo_ray.train import (
    checkpoint_at,
    device_of,
    evaluate,
    load_model,
    prune_checkpoints,
    worker_resources,
)
from turbo_ray.tune import (
    SearchSpace,
    best_trials,
    run_search,
    searched,
    selected_epoch,
    trains_in_trial,
    trial_id,
    write_search_outputs,
)

PROTOCOL = "nested-loso"


def run_nested(
    cfg: Config,
    corpus: Corpus,
    space: SearchSpace,
    paths: RunPaths,
    tracker: Tracker,
    resume: bool = False,
    callbacks: list | None = None,
) -> tuple[pd.DataFrame, list[Path]]:
    """Search every outer fold (`tune.folds` of them), log the trials to `tracker`, test each
    fold's selected checkpoint on its held-out session, then keep only those checkpoints' weights
    (unless `train.keep_checkpoints`); returns one row per fold and the search outputs written to
    `paths.out`. `callbacks`: Tune callbacks for the search (progress lines)."""
    folds = corpus.folds(cfg.data)[: cfg.tune.folds]
    grid = run_search(cfg, folds, space, corpus, paths, resume, callbacks)
    tracker.log_trials(grid, cfg)
    written = write_search_outputs(grid, space, cfg, paths.out)
    selected = best_trials(grid, cfg)
    rows = [tested(cfg, corpus, fold, selected[fold.test_session], paths) for fold in folds]
    if not cfg.train.keep_checkpoints:  # the losing and stopped trials' checkpoints go
        prune_checkpoints(paths.search, {row["checkpoint"] for row in rows})
    return pd.DataFrame(rows), written


def tested(
    cfg: Config, corpus: Corpus, fold: Fold, trial: ray.tune.Result, paths: RunPaths
) -> dict:
    """The fold's test row: recorded in the job's storage once tested (a resumed job, on any
    machine, reads it back; its checkpoints may be pruned by then), else `evaluate_selected`."""
    record = paths.test_record(fold.test_session)
    chosen = (trial_id(trial), selected_epoch(trial, cfg.tune.metric))
    if (text := read_text(record)) is not None:
        row = json.loads(text)
    else:
        row = evaluate_selected(cfg, corpus, fold, trial, chosen[1], paths)
        write_text(record, json.dumps(row))
    if (row["trial"], row["best_epoch"]) != chosen:
        raise RuntimeError(
            f"{record} tested {row['trial']} epoch {row['best_epoch']}, "
            f"but fold {fold.test_session}'s search selected {chosen}"
        )
    return row


def selection_table(results: pd.DataFrame, cfg: Config) -> str:
    """What each fold's search selected on its validation speakers:
    trial, epoch, score, parameters."""
    metric = cfg.tune.metric
    rows = [
        {
            "test_session": row.test_session,
            "trial": row.trial,
            "epoch": row.best_epoch,
            metric: f"{100 * row[metric]:.2f}",
            **{k: _short(v) for k, v in row.params.items()},
        }
        for _, row in results.iterrows()
    ]
    return (
        "Selected per fold on its validation speakers (its test session never seen):\n"
        + pd.DataFrame(rows).to_string(index=False)
    )


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def evaluate_selected(
    cfg: Config, corpus: Corpus, fold: Fold, trial: ray.tune.Result, epoch: int, paths: RunPaths
) -> dict:
    """The fold's row: what its search saw and chose (`trial`, its `epoch`), and the test scores
    of that checkpoint."""
    checkpoint, metrics = checkpoint_at(trial_run(trial, cfg, paths), epoch)
    custom = worker_resources(cfg)
    cpus, gpus = custom.pop("CPU"), custom.pop("GPU", 0)
    scores = ray.get(
        _evaluate.options(num_cpus=cpus, num_gpus=gpus, resources=custom).remote(
            checkpoint, corpus.shards, fold.test.utterance_id.tolist(), device_of(cfg)
        )
    )
    seen = pd.concat([fold.train, fold.val])  # what its search trained and validated on
    return {
        "test_session": fold.test_session,
        "search_sessions": sorted(int(s) for s in seen.session.unique()),
        "trial": trial_id(trial),
        "best_epoch": epoch,
        cfg.tune.metric: metrics[cfg.tune.metric],
        "params": searched(trial.config),
        **{k: scores[k] for k in ("wa", "ua", "f1")},
        "n_test": scores["n"],
        "confusion": scores["confusion"],
        "checkpoint": checkpoint.path,
    }


def trial_run(trial: ray.tune.Result, cfg: Config, paths: RunPaths):
    """The run that kept a trial's checkpoints, with their epochs' metrics: the Tune trial itself
    when it trained in its own process, else its TorchTrainer's run (in the trial's folder)."""
    if trains_in_trial(override(cfg, searched(trial.config))):
        return trial
    return ray.train.Result.from_path(paths.trial_dir(trial_id(trial)))


@ray.remote
def _evaluate(
    checkpoint: ray.train.Checkpoint, shards: str, test_ids: list[str], device: torch.device
) -> dict:
    """One deterministic pass of a checkpoint over a test split,
    where a training worker would run."""
    configure_ray_data()
    with checkpoint.as_directory() as directory:
        model, meta = load_model(directory, device)
    cfg = Config.from_dict(meta["config"])
    batches = split_dataset(cfg, shards, test_ids).iter_torch_batches(
        batch_size=cfg.data.batch_size, collate_fn=collate_for(cfg)
    )
    return evaluate(model, batches, len(meta["classes"]), device, cfg.train.precision)
