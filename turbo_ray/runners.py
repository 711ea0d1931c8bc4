"""The two runners of the training loop (`train.fit`): inside a Tune trial's own process (one
worker) or on each worker of a Ray Train TorchTrainer (DDP); what a worker asks Ray for, and where
it trains.

    fit(loop_config(cfg, classes, shards, splits), trial_context(device_of(cfg)))   # in a trial
    build_trainer(cfg, shards, splits, classes, name).fit()                         # DDP workers
"""

from __future__ import annotations

import os
from collections.abc import Callable

import ray.train
import ray.train.torch
import ray.tune
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from turbo_ray.checkpoints import retention
from turbo_ray.config import Config
from turbo_ray.paths import storage_uri
from turbo_ray.train import RunContext, fit, loop_config


def worker_context() -> RunContext:
    """The context of a TorchTrainer worker: Ray Train's rank, checkpoint and report."""
    ctx = ray.train.get_context()
    return RunContext(
        rank=ctx.get_world_rank(),
        world=ctx.get_world_size(),
        device=ray.train.torch.get_device(),
        checkpoint=ray.train.get_checkpoint(),
        report=_reporter(ray.train),
        placement_group=None,
        prepare_model=ray.train.torch.prepare_model,
    )


def trial_context(device: torch.device) -> RunContext:
    """The context of a run inside a Tune trial: one process, Tune's checkpoint and report, its
    data fed inside the trial's reservation."""
    return RunContext(
        rank=0,
        world=1,
        device=device,
        checkpoint=ray.tune.get_checkpoint(),
        report=_reporter(ray.tune),
        placement_group=ray.util.get_current_placement_group(),
        prepare_model=lambda model: model.to(device),
    )


def _reporter(library) -> Callable[..., None]:
    """`report(metrics, checkpoint_dir=None)` through `library` (ray.train or ray.tune: each has
    its own Checkpoint class)."""

    def report(metrics: dict, checkpoint_dir: str | None = None) -> None:
        checkpoint = library.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        library.report(metrics, checkpoint=checkpoint)

    return report


def train_loop_per_worker(loop_config: dict) -> None:
    """The Ray Train worker function
    (it returns nothing: Ray ships a return value to the controller)."""
    fit(loop_config, worker_context())


def build_trainer(
    cfg: Config,
    shards: str,
    splits: dict[str, list],
    classes: list[str],
    name: str,
    callbacks: list | None = None,
    loop: Callable[[dict], None] = train_loop_per_worker,
) -> TorchTrainer:
    """A TorchTrainer for one Turbo run (`loop_config`): each worker feeds itself its share of
    "train" (`TrainFeed`); rank 0 reads "val" whole. `loop`: the worker function
    (tests pass a wrapper of `fit` that inspects the replicas or injects a failure). Ray Train's
    preemption watcher, one more process per run that matters only on spot instances, is off unless
    RAY_TRAIN_ENABLE_PREEMPTION_WATCHER is set (the run's controller reads this process's value)."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    return TorchTrainer(
        loop,
        train_loop_config=loop_config(cfg, classes, shards, splits),
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=uses_cuda(cfg),
            resources_per_worker=worker_resources(cfg),
            placement_strategy=cfg.train.placement_strategy,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_uri(cfg.train.storage_path),
            callbacks=callbacks,
            checkpoint_config=CheckpointConfig(**retention(cfg)),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
        ),
    )


def worker_resources(cfg: Config) -> dict[str, float]:
    """What one training worker asks Ray for (a test pass asks the same, to run where one would)."""
    t = cfg.train
    return {"CPU": t.cpus_per_worker} | ({t.gpu_resource: t.gpus_per_worker} if t.use_gpu else {})


def device_of(cfg: Config) -> torch.device:
    """Where a run inside a Tune trial trains (a TorchTrainer worker asks Ray Train)."""
    return torch.device("cuda" if uses_cuda(cfg) else "cpu")


def uses_cuda(cfg: Config) -> bool:
    """GPUs asked as "GPU" are real: the workers train on CUDA. A stand-in resource (a rehearsal
    cluster's) only places them."""
    return cfg.train.use_gpu and cfg.train.gpu_resource == "GPU"
