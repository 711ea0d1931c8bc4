"""The test pass, the same for both protocols: a fold's selected checkpoint, tested once on its
held-out outer fold, in a Ray task placed as a training worker would be. No run sees its test split
while it trains.

    checkpoint, metrics = checkpoint_at(run, selected_epoch(run, cfg.tune.metric))
    row = tested_row(cfg, corpus, fold, checkpoint, metrics)   # a row of the results table
    row = recorded_test_row(cfg, corpus, fold, key, trial, paths)  # a search's, tested once
"""

from __future__ import annotations

import json

import pandas as pd
import ray
import ray.train
import ray.tune
import torch

from turbo_ray.checkpoints import checkpoint_at, load_model, selected_epoch
from turbo_ray.config import Config
from turbo_ray.data.corpus import Corpus
from turbo_ray.data.folds import Fold
from turbo_ray.data.pipeline import collate_for, configure_ray_data, split_dataset
from turbo_ray.inference import evaluate
from turbo_ray.metrics import positive_index, scores_of
from turbo_ray.paths import RunPaths, read_text, write_text
from turbo_ray.runners import device_of, worker_resources
from turbo_ray.trials import SearchKey, searched, trial_config, trial_id
from turbo_ray.tune import trains_in_trial


def tested_row(
    cfg: Config,
    corpus: Corpus,
    fold: Fold,
    checkpoint: ray.train.Checkpoint,
    metrics: dict,
    **selection,
) -> dict:
    """The fold's row: what selected the checkpoint (`selection`: e.g. its trial), its epoch and
    validation score (`metrics`, as its run reported them), and its test scores."""
    custom = worker_resources(cfg)
    cpus, gpus = custom.pop("CPU"), custom.pop("GPU", 0)
    scores = ray.get(
        _evaluate.options(num_cpus=cpus, num_gpus=gpus, resources=custom).remote(
            checkpoint, corpus.shards, fold.test.utterance_id.tolist(), device_of(cfg)
        )
    )
    metric = cfg.tune.metric
    return {
        "test_session": fold.number,
        **selection,
        "best_epoch": metrics["epoch"],
        metric: metrics[metric],
        **{k: scores[k] for k in scores_of(scores)},
        "n_test": scores["n"],
        "confusion": scores["confusion"],
    }


def recorded_test_row(
    cfg: Config,
    corpus: Corpus,
    fold: Fold,
    key: SearchKey,
    trial: ray.tune.Result,
    paths: RunPaths,
) -> dict:
    """A search's row of the results table, from its selected trial: tested once, then recorded
    in the job's storage (a resumed job, on any machine, reads it back: its checkpoints may be
    pruned by then)."""
    record = paths.test_record(*key)
    chosen = (trial_id(trial), selected_epoch(trial, cfg.tune.metric))
    if (text := read_text(record)) is not None:
        row = json.loads(text)
    else:
        checkpoint, metrics = checkpoint_at(checkpointed_run(trial, cfg, paths), chosen[1])
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


def checkpointed_run(trial: ray.tune.Result, cfg: Config, paths: RunPaths):
    """The run that kept a trial's checkpoints, with their epochs' metrics: the Tune trial itself
    when it trained in its own process, else its TorchTrainer's run (in the trial's folder)."""
    if trains_in_trial(trial_config(cfg, trial.config)):
        return trial
    return ray.train.Result.from_path(paths.trial_dir(trial_id(trial)))


@ray.remote
def _evaluate(
    checkpoint: ray.train.Checkpoint, shards: str, test_ids: list[str], device: torch.device
) -> dict:
    """One deterministic pass of a checkpoint over a test split."""
    configure_ray_data()
    with checkpoint.as_directory() as directory:
        model, meta = load_model(directory, device)
    cfg = Config.from_dict(meta["config"])
    batches = split_dataset(cfg, shards, test_ids).iter_torch_batches(
        batch_size=cfg.data.batch_size, collate_fn=collate_for(cfg)
    )
    positive = positive_index(meta["classes"], cfg.data.positive_class)
    return evaluate(model, batches, len(meta["classes"]), device, cfg.train.precision, positive)
