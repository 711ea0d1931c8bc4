"""The test pass, the same for both protocols: a fold's selected checkpoint, tested once on its
held-out session, in a Ray task placed as a training worker would be. No run sees its test split
while it trains.

    checkpoint, metrics = checkpoint_at(run, selected_epoch(run, cfg.tune.metric))
    row = tested_row(cfg, corpus, fold, checkpoint, metrics)   # a row of the results table
"""

from __future__ import annotations

import ray
import ray.train
import torch

from turbo_ray.checkpoints import load_model
from turbo_ray.config import Config
from turbo_ray.data.corpus import Corpus
from turbo_ray.data.folds import Fold
from turbo_ray.data.pipeline import collate_for, configure_ray_data, split_dataset
from turbo_ray.inference import evaluate
from turbo_ray.metrics import positive_index
from turbo_ray.results import scores_of
from turbo_ray.runners import device_of, worker_resources


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
        "test_session": fold.test_session,
        **selection,
        "best_epoch": metrics["epoch"],
        metric: metrics[metric],
        **{k: scores[k] for k in scores_of(scores)},
        "n_test": scores["n"],
        "confusion": scores["confusion"],
    }


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
