"""The main job, nested leave-one-session-out: per outer fold k, a search (TPE + ASHA) trains and
validates on the other sessions only, and fold k's test score is that of the checkpoint its own search
selected (best trial, best epoch). Session k's utterances never touch fold k's selection.

    results, paths = run_nested(cfg, corpus, space, out_dir, storage)   # one row per fold; resume=True
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import ray
import ray.train
import torch

from turbo_ray.config import Config
from turbo_ray.data.corpus import Corpus
from turbo_ray.data.iemocap import Fold
from turbo_ray.data.pipeline import collate_for, configure_ray_data, split_dataset
from turbo_ray.train import best_checkpoint, evaluate, load_model, storage_uri
from turbo_ray.tune import (
    TRIALS_DIR,
    SearchSpace,
    best_trials,
    run_search,
    trial_id,
    write_search_outputs,
)

PROTOCOL = "nested-loso"


def run_nested(cfg: Config, corpus: Corpus, space: SearchSpace, out_dir: Path, storage: str,
               resume: bool = False) -> tuple[pd.DataFrame, list[Path]]:
    """Search every outer fold (`tune.folds` of them), test each fold's selected checkpoint on its
    held-out session; returns one row per fold and the search outputs written to `out_dir`."""
    folds = corpus.folds(cfg.data)[:cfg.tune.folds]
    grid = run_search(cfg, folds, space, corpus, out_dir, storage, resume)
    paths = write_search_outputs(grid, space, cfg, out_dir)
    selected = best_trials(grid, cfg)
    rows = [test_selected(cfg, corpus, fold, selected[fold.test_session], space, storage) for fold in folds]
    return pd.DataFrame(rows), paths


def test_selected(cfg: Config, corpus: Corpus, fold: Fold, trial: ray.tune.Result, space: SearchSpace,
                  storage: str) -> dict:
    """The fold's row: what its search saw and chose, and the test scores of the chosen checkpoint."""
    run = ray.train.Result.from_path(f"{storage_uri(storage)}/{TRIALS_DIR}/trial-{trial_id(trial)}")
    checkpoint, metrics = best_checkpoint(run, cfg.tune.metric)
    resources = ({"num_cpus": cfg.train.cpus_per_worker}
                 | ({"num_gpus": cfg.train.gpus_per_worker} if cfg.train.use_gpu else {}))
    scores = ray.get(_evaluate.options(**resources).remote(
        checkpoint, corpus.shards, fold.test.utterance_id.tolist(), cfg.train.use_gpu))
    searched = pd.concat([fold.train, fold.val])
    return {"test_session": fold.test_session,
            "search_sessions": sorted(int(s) for s in searched.session.unique()),
            "trial": trial_id(trial), "best_epoch": int(metrics["epoch"]),
            cfg.tune.metric: metrics[cfg.tune.metric],
            "params": {p.key: trial.config[p.key] for p in space.params},
            **{k: scores[k] for k in ("wa", "ua", "f1")}, "n_test": scores["n"],
            "confusion": scores["confusion"], "checkpoint": checkpoint.path}


@ray.remote
def _evaluate(checkpoint: ray.train.Checkpoint, shards: str, test_ids: list[str], use_gpu: bool) -> dict:
    """One deterministic pass of a checkpoint over a test split, where a training worker would run."""
    configure_ray_data()
    device = torch.device("cuda" if use_gpu else "cpu")
    with checkpoint.as_directory() as directory:
        model, meta = load_model(directory, device)
    cfg = Config.from_dict(meta["config"])
    batches = split_dataset(cfg, shards, test_ids, train=False).iter_torch_batches(
        batch_size=cfg.data.batch_size, collate_fn=collate_for(cfg))
    return evaluate(model, batches, len(meta["classes"]), device, cfg.train.precision)
