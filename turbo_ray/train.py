"""Training: the Turbo step and epoch, validation, and `fit`, the one training loop (its two
runners, a Tune trial's process and a TorchTrainer's workers, are in `turbo_ray.runners`).

    # one optimizer step
    parts = train_step(model, batch, optimizer, scheduler, cfg, device)
    # + grad_accum, DDP sync
    metrics = train_epoch(model, batches, optimizer, scheduler, cfg, device)
    # a whole run, epoch by epoch; splits: {"train": ids, "val": ids}
    model = fit(loop_config(cfg, classes, shards, splits), ctx)

The benchmarks time these same functions. Each epoch: train on this worker's shard (DDP), then
rank 0 evaluates the whole validation split and writes a checkpoint. A run never sees a test split:
the job tests the checkpoint it selects, once (`turbo_ray.evaluation`). A run restarted by Ray
(FailureConfig) or started again under the same name resumes from its last checkpoint, so no epoch
is repeated or skipped.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.data
import torch
from ray.train import Checkpoint
from ray.util.placement_group import PlacementGroup

from turbo_ray.checkpoints import KEEP_SCORE, keep_score, restore, save_checkpoint
from turbo_ray.config import Config
from turbo_ray.data.pipeline import (
    LOCAL_SHUFFLE_ROWS,
    TrainFeed,
    collate_for,
    configure_ray_data,
    split_dataset,
)
from turbo_ray.inference import evaluate, forward_precision
from turbo_ray.losses import LossWeights, objective
from turbo_ray.metrics import positive_index
from turbo_ray.model import TurboModel, build_model


def build_optimizer(model: TurboModel, cfg: Config) -> torch.optim.AdamW:
    """AdamW: pretrained encoders at `encoder_lr`, new heads and randomly initialised encoders at
    `lr`; weight decay on matrices only (biases, norms and the temperature are excluded, as in
    open_clip). Fused: one kernel over all parameters, on CPU and GPU (BENCHMARKS.md has the
    speed-up)."""
    slow = {
        id(p)
        for enc in (model.audio_encoder, model.text_encoder)
        if enc is not None and enc.pretrained
        for p in enc.parameters()
    }
    groups = []
    for lr, pretrained in ((cfg.train.lr, False), (cfg.train.encoder_lr, True)):
        params = [
            p for p in model.parameters() if p.requires_grad and (id(p) in slow) == pretrained
        ]
        groups += [
            {
                "params": [p for p in params if p.ndim >= 2],
                "lr": lr,
                "weight_decay": cfg.train.weight_decay,
            },
            {"params": [p for p in params if p.ndim < 2], "lr": lr, "weight_decay": 0.0},
        ]
    return torch.optim.AdamW([g for g in groups if g["params"]], fused=True)


def warmup_linear(total_steps: int, warmup_ratio: float):
    """LR multiplier: linear warm-up over the first steps, then linear decay to 0."""
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def _unwrap(model: torch.nn.Module) -> TurboModel:
    return model.module if hasattr(model, "module") else model


@dataclass(frozen=True)
class RunContext:
    """All that differs between the two runners of `fit`: inside a Tune trial (one process) or
    as a TorchTrainer worker (DDP)."""

    rank: int
    world: int
    device: torch.device
    checkpoint: Checkpoint | None  # the run's last checkpoint, to resume from
    report: Callable[..., None]  # report(metrics, checkpoint_dir=None)
    placement_group: PlacementGroup | None  # where the run's Ray Data tasks go (None: anywhere)
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module]  # on the device (and DDP)


def fit(loop_config: dict, ctx: RunContext) -> TurboModel:
    """Train this rank's replica epoch by epoch, resuming from the last checkpoint; returns the
    model. `loop_config`: see `loop_config`.
    Everything a run depends on is set here, so a process that ran another run before (a reused
    Tune trial) starts from the same state as a fresh one."""
    at_start = time.time()
    cfg, classes = Config.from_dict(loop_config["config"]), loop_config["classes"]
    shards, splits = loop_config["shards"], loop_config["splits"]
    configure_ray_data()
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    run = _Run.start(cfg, len(classes), len(splits["train"]), ctx)
    feed = TrainFeed(cfg, shards, splits["train"], ctx.rank, ctx.world, ctx.placement_group)
    # rank 0 validates on the whole split, so no sample is dropped or repeated
    val = split_dataset(cfg, shards, splits["val"], ctx.placement_group) if ctx.rank == 0 else None
    for epoch in range(run.done + 1, cfg.train.epochs + 1):
        seed = _seed(cfg.train.seed, ctx.rank, epoch)
        torch.manual_seed(seed)  # dropout masks: per rank and epoch
        batches = feed.epoch(epoch).iter_torch_batches(
            batch_size=cfg.data.batch_size,
            collate_fn=collate_for(cfg, epoch),
            local_shuffle_buffer_size=LOCAL_SHUFFLE_ROWS,
            local_shuffle_seed=seed,
        )
        metrics = {"epoch": epoch, "at_worker_start": at_start}
        metrics |= train_epoch(run.model, batches, run.optimizer, run.scheduler, cfg, ctx.device)
        with tempfile.TemporaryDirectory() as tmp:
            if ctx.rank == 0:
                metrics |= validate_epoch(run.core, val, cfg, classes, ctx.device)
                run.checkpoint(Path(tmp), epoch, metrics, cfg, classes)
            ctx.report(metrics, tmp if ctx.rank == 0 else None)
    # resumed with nothing left: a Tune trial restored after its run finished but before Tune
    # recorded it still gets its final result
    if run.done == cfg.train.epochs and run.last:
        ctx.report(run.last)
    return run.core


@dataclass
class _Run:
    """A rank's training state: the model (wrapped for DDP), its optimizer and schedule, the
    epochs done and the best selection score so far (restored from the last checkpoint)."""

    model: torch.nn.Module
    core: TurboModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    done: int = 0  # epochs completed (numbered from 1)
    best: float = float("-inf")
    best_epoch: int = 0
    last: dict | None = None  # the last checkpoint's metrics

    @classmethod
    def start(cls, cfg: Config, num_classes: int, n_train: int, ctx: RunContext) -> _Run:
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model, state, last = restore(build_model(cfg, num_classes), ctx.checkpoint)
        # on the device now: optimizer state is loaded onto it
        model = ctx.prepare_model(model)
        core = _unwrap(model)
        optimizer = build_optimizer(core, cfg)
        steps = steps_per_epoch(n_train, ctx.world, cfg.data.batch_size, cfg.train.grad_accum)
        run = cls(model, core, optimizer, build_scheduler(optimizer, cfg, steps), last=last)
        if state:
            run.optimizer.load_state_dict(state["optimizer"])
            run.scheduler.load_state_dict(state["scheduler"])
            run.done, run.best, run.best_epoch = state["epoch"], state["best"], state["best_epoch"]
        return run

    def checkpoint(
        self, directory: Path, epoch: int, metrics: dict, cfg: Config, classes: list[str]
    ) -> None:
        """Rank 0 after validating: the best epoch so far (ties go to the earlier) into
        `metrics` (what Tune's searcher and scheduler see, and the epoch the job tests), and the
        epoch's checkpoint into `directory`."""
        score = metrics[cfg.tune.metric]
        if score > self.best:
            self.best, self.best_epoch = score, epoch
        metrics |= {f"best_{cfg.tune.metric}": self.best, "best_epoch": self.best_epoch}
        metrics[KEEP_SCORE] = keep_score(score, epoch)
        progress = (epoch, self.best, self.best_epoch)
        save_checkpoint(
            directory, self.core, self.optimizer, self.scheduler, progress, cfg, classes, metrics
        )


def loop_config(cfg: Config, classes: list[str], shards: str, splits: dict[str, list]) -> dict:
    """What `fit` needs besides its context: the config, the classes, the shards and the ids of
    each split ("train"; "val" selects)."""
    return {"config": cfg.to_dict(), "classes": list(classes), "shards": shards, "splits": splits}


def validate_epoch(
    model: TurboModel, val: ray.data.Dataset, cfg: Config, classes: list[str], device: torch.device
) -> dict[str, Any]:
    """`evaluate` on the validation split, as `val_<score>` metrics."""
    started = time.perf_counter()
    batches = val.iter_torch_batches(batch_size=cfg.data.batch_size, collate_fn=collate_for(cfg))
    positive = positive_index(classes, cfg.data.positive_class)
    result = evaluate(model, batches, len(classes), device, cfg.train.precision, positive)
    return {f"val_{k}": v for k, v in result.items()} | {
        "time_eval_s": time.perf_counter() - started
    }


def steps_per_epoch(train_rows: int, world: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps per epoch: each worker gets train_rows // world rows (an equal split)."""
    batches = math.ceil(train_rows // world / batch_size)
    return math.ceil(batches / grad_accum)


def build_scheduler(optimizer, cfg: Config, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then decay over the run's `train.epochs` × `steps` optimizer steps."""
    total = cfg.train.epochs * steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_linear(total, cfg.train.warmup_ratio)
    )


def _seed(*values: int) -> int:
    return int(np.random.SeedSequence(values).generate_state(1)[0])


def forward_backward(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    weights: LossWeights,
    precision: str,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """One micro-batch: forward in the run's precision, the objective in fp32, backward
    (outside autocast, as PyTorch advises). Gradients accumulate; the caller steps. Returns the loss
    parts."""
    inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "labels"}
    with forward_precision(precision, device):
        out = model(**inputs)
    parts = objective(out, batch["labels"].to(device, non_blocking=True), weights)
    parts["total"].backward()
    return parts


def optimizer_step(
    model: torch.nn.Module, optimizer, scheduler, grad_clip: float, window: int
) -> None:
    """Average the summed gradients of a window of `window` micro-batches, clip, step, and keep a
    learnable temperature in range."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    for grad in grads if window > 1 else ():
        grad.div_(window)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    _unwrap(model).clamp_temperature()


def train_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer,
    scheduler,
    cfg: Config,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """One optimizer step on one batch:
    the step `train_epoch` takes when `train.grad_accum` is 1."""
    parts = forward_backward(
        model, batch, LossWeights.from_config(cfg.loss), cfg.train.precision, device
    )
    optimizer_step(model, optimizer, scheduler, cfg.train.grad_clip, window=1)
    return parts


def train_epoch(
    model: torch.nn.Module, batches, optimizer, scheduler, cfg: Config, device: torch.device
) -> dict[str, float]:
    """One pass over this worker's batches: an optimizer step after every `grad_accum` batches and
    after the last one, each on gradients averaged over its window and all-reduced over the workers.
    Returns the mean loss parts (over all workers' steps) and timings."""
    model.train()
    ddp, weights = model is not _unwrap(model), LossWeights.from_config(cfg.loss)
    sums, steps, window, waited, stamps = {}, 0, 0, 0.0, {}
    started = ready = time.perf_counter()
    for batch, last in _with_last(batches):
        waited += time.perf_counter() - ready  # the data feed kept this worker waiting
        stamps.setdefault("at_first_batch", time.time())
        window += 1
        boundary = last or window == cfg.train.grad_accum
        with nullcontext() if boundary or not ddp else model.no_sync():
            parts = forward_backward(model, batch, weights, cfg.train.precision, device)
        if boundary:
            optimizer_step(model, optimizer, scheduler, cfg.train.grad_clip, window)
            window = 0
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        steps += 1
        stamps.setdefault("at_first_step", time.time())
        ready = time.perf_counter()
    means = _mean_over_ranks(sums, steps, device)
    return {
        "lr": scheduler.get_last_lr()[0],
        "time_train_s": time.perf_counter() - started,
        "time_data_wait_s": waited,
        **stamps,  # wall-clock times (time.time()) of the epoch's first batch and first step
    } | {f"train_{k}": v for k, v in means.items()}


_END = object()


def _with_last(items):
    """(item, is_last) pairs: the step must know before its backward whether it closes the epoch."""
    iterator = iter(items)
    previous = next(iterator, _END)
    while previous is not _END:
        current = next(iterator, _END)
        yield previous, current is _END
        previous = current


def _mean_over_ranks(sums: dict[str, float], steps: int, device: torch.device) -> dict[str, float]:
    """Per-step means of the loss parts over all ranks' steps (the same value on every rank)."""
    keys = sorted(sums)
    values = torch.tensor([sums[k] for k in keys] + [steps], dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(values)
    return {k: float(v) / max(1.0, float(values[-1])) for k, v in zip(keys, values[:-1])}
