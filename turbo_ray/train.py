"""Ray Train: the Turbo training step and epoch, the per-worker loop and the TorchTrainer that
runs it.

    # one optimizer step
    parts = train_step(model, batch, optimizer, scheduler, cfg, device)
    # + grad_accum, DDP sync
    metrics = train_epoch(model, batches, optimizer, scheduler, cfg, device)
    # `fit` on each DDP worker; splits: {"train": ids, "val": ids(, "test": ids)}
    result = build_trainer(cfg, shards, splits, classes, name).fit()

The benchmarks time these same functions. Each epoch: train on this worker's shard (DDP), then
rank 0 evaluates the whole validation split (and the test split when given: it is reported, never
used for selection) and writes a checkpoint. A run restarted by Ray (FailureConfig) or started again
under the same name resumes from its last checkpoint, so no epoch is repeated or skipped.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Collection
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import ray.train
import ray.train.torch
import ray.tune
import torch
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer
from ray.util.placement_group import PlacementGroup

from turbo_ray.config import Config
from turbo_ray.data.pipeline import (
    LOCAL_SHUFFLE_ROWS,
    TrainFeed,
    collate_for,
    configure_ray_data,
    split_dataset,
)
from turbo_ray.losses import LossWeights, objective
from turbo_ray.metrics import classification_report, confusion_matrix
from turbo_ray.model import TurboModel, build_model
from turbo_ray.paths import storage_uri

MODEL_FILE, STATE_FILE, META_FILE = "model.pt", "train_state.pt", "meta.json"
KEEP_SCORE = "checkpoint_score"  # what ranks the checkpoints Ray keeps (`keep_score`)


def keep_score(score: float, epoch: int) -> float:
    """The validation score with ties going to the earlier epoch, as selection breaks them (Ray
    would keep the later of two equal scores): distinct scores keep their order."""
    return score - epoch * 1e-12


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


@torch.no_grad()
def evaluate(
    model: TurboModel, batches, num_classes: int, device: torch.device, precision: str = "fp32"
) -> dict[str, Any]:
    """One deterministic pass (dropout off): WA, UA, macro-F1 and the confusion matrix."""
    model.eval()
    y_true, y_pred = [], []
    for batch in batches:
        inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "labels"}
        with forward_precision(precision, device):
            logits = model(**inputs).logits
        y_pred.append(logits.float().argmax(-1).cpu())
        y_true.append(batch["labels"].cpu())
    y_true, y_pred = torch.cat(y_true).numpy(), torch.cat(y_pred).numpy()
    report = classification_report(y_true, y_pred, num_classes)
    return report | {
        "confusion": confusion_matrix(y_true, y_pred, num_classes).tolist(),
        "n": len(y_true),
    }


def save_checkpoint(
    directory: Path,
    model: TurboModel,
    optimizer,
    scheduler,
    progress: tuple[int, float, int],
    cfg: Config,
    classes: list[str],
    metrics: dict,
) -> None:
    """Weights and optimizer state as plain tensors (loadable with `torch.load(weights_only=True)`);
    `progress`: (this epoch, the best selection score up to it, that score's epoch)."""
    epoch, best, best_epoch = progress
    torch.save(model.state_dict(), directory / MODEL_FILE)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "best": best,
            "best_epoch": best_epoch,
        },
        directory / STATE_FILE,
    )
    meta = {"epoch": epoch, "config": cfg.to_dict(), "classes": classes, "metrics": metrics}
    (directory / META_FILE).write_text(json.dumps(meta, indent=1))


def load_model(
    checkpoint_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[TurboModel, dict]:
    """Rebuild the model of a checkpoint and load its weights; returns (model, meta)."""
    directory = Path(checkpoint_dir)
    meta = json.loads((directory / META_FILE).read_text())
    model = build_model(Config.from_dict(meta["config"]), len(meta["classes"]))
    model.load_state_dict(
        torch.load(directory / MODEL_FILE, map_location=device, weights_only=True)
    )
    return model.to(device).eval(), meta


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


def fit(loop_config: dict, ctx: RunContext) -> TurboModel:
    """Train this rank's replica epoch by epoch, resuming from the last checkpoint; returns the
    model. `loop_config`: see `loop_config`.
    Everything a run depends on is set here, so a process that ran another run before (a reused
    Tune trial) starts from the same state as a fresh one."""
    at_start = time.time()
    cfg, classes = Config.from_dict(loop_config["config"]), loop_config["classes"]
    rank, world, device = ctx.rank, ctx.world, ctx.device
    shards, splits = loop_config["shards"], loop_config["splits"]
    configure_ray_data()
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model, state, last = _restore(build_model(cfg, len(classes)), ctx.checkpoint)
    # on the device now: optimizer state is loaded onto it
    model = ctx.prepare_model(model)
    core = _unwrap(model)
    optimizer = build_optimizer(core, cfg)
    steps = steps_per_epoch(len(splits["train"]), world, cfg.data.batch_size, cfg.train.grad_accum)
    scheduler = build_scheduler(optimizer, cfg, steps)
    # epochs completed (numbered from 1); the best selection score so far and its epoch
    done, best, best_epoch = 0, float("-inf"), 0
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        done, best, best_epoch = state["epoch"], state["best"], state["best_epoch"]

    feed = TrainFeed(cfg, shards, splits["train"], rank, world, ctx.placement_group)
    # rank 0 evaluates every split whole, so no sample is dropped or repeated
    evaluated = {
        name: split_dataset(cfg, shards, splits[name], ctx.placement_group)
        for name in ("val", "test")
        if name in splits and rank == 0
    }
    for epoch in range(done + 1, cfg.train.epochs + 1):
        torch.manual_seed(_seed(cfg.train.seed, rank, epoch))  # dropout masks: per rank and epoch
        batches = feed.epoch(epoch).iter_torch_batches(
            batch_size=cfg.data.batch_size,
            collate_fn=collate_for(cfg, epoch),
            local_shuffle_buffer_size=LOCAL_SHUFFLE_ROWS,
            local_shuffle_seed=_seed(cfg.train.seed, rank, epoch),
        )
        metrics = {"epoch": epoch, "at_worker_start": at_start}
        metrics |= train_epoch(model, batches, optimizer, scheduler, cfg, device)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint_dir = None
            if rank == 0:
                metrics |= validate_epoch(core, evaluated, cfg, len(classes), device)
                score = cfg.tune.metric
                if score in metrics:
                    if metrics[score] > best:  # ties go to the earlier epoch
                        best, best_epoch = metrics[score], epoch
                    # what Tune's searcher and scheduler see, and the epoch selection tests
                    metrics |= {f"best_{score}": best, "best_epoch": best_epoch}
                    metrics[KEEP_SCORE] = keep_score(metrics[score], epoch)
                save_checkpoint(
                    Path(tmp),
                    core,
                    optimizer,
                    scheduler,
                    (epoch, best, best_epoch),
                    cfg,
                    classes,
                    metrics,
                )
                checkpoint_dir = tmp
            ctx.report(metrics, checkpoint_dir)
    # resumed with nothing left: a Tune trial restored after its run finished but before Tune
    # recorded it still gets its final result
    if done == cfg.train.epochs and last:
        ctx.report(last)
    return core


def _restore(
    model: TurboModel, checkpoint: Checkpoint | None
) -> tuple[TurboModel, dict | None, dict | None]:
    """Load a Train checkpoint's weights into `model`;
    returns (model, training state, last metrics)."""
    if checkpoint is None:
        return model, None, None
    with checkpoint.as_directory() as d:
        model.load_state_dict(
            torch.load(Path(d) / MODEL_FILE, map_location="cpu", weights_only=True)
        )
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        last = json.loads((Path(d) / META_FILE).read_text())["metrics"]
    return model, state, last


def validate_epoch(
    model: TurboModel,
    splits: dict[str, Any],
    cfg: Config,
    num_classes: int,
    device: torch.device,
) -> dict[str, Any]:
    """`evaluate` on each evaluation split ("val", and "test" where a run reports it, never to
    select), as `<split>_<score>` metrics."""
    started, metrics = time.perf_counter(), {}
    for name, rows in splits.items():
        batches = rows.iter_torch_batches(
            batch_size=cfg.data.batch_size, collate_fn=collate_for(cfg)
        )
        result = evaluate(model, batches, num_classes, device, cfg.train.precision)
        metrics |= {f"{name}_{k}": v for k, v in result.items()}
    return metrics | {"time_eval_s": time.perf_counter() - started}


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


def forward_precision(precision: str, device: torch.device):
    """The forward's autocast context: bf16 for "bf16" ("auto": on CUDA), none for fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


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


def loop_config(cfg: Config, classes: list[str], shards: str, splits: dict[str, list]) -> dict:
    """What `fit` needs besides its context: the config, the classes, the shards and the ids of
    each split ("train"; "val" selects; "test", where given, is only reported)."""
    return {"config": cfg.to_dict(), "classes": list(classes), "shards": shards, "splits": splits}


def retention(cfg: Config, validated: bool) -> dict[str, Any]:
    """Which checkpoints a run keeps while it trains (either runner's CheckpointConfig): the
    `train.num_to_keep` best by validation score, ties to the earlier epoch (Ray also keeps the
    latest, to resume from)."""
    return {
        "num_to_keep": cfg.train.num_to_keep,
        "checkpoint_score_attribute": KEEP_SCORE if validated else None,
        "checkpoint_score_order": "max",
    }


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
    "train" (`TrainFeed`); rank 0 reads "val"/"test" whole. `loop`: the worker function
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
            checkpoint_config=CheckpointConfig(**retention(cfg, "val" in splits)),
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


def best_checkpoint(result, metric: str) -> tuple[Checkpoint, dict[str, Any]]:
    """The checkpoint with the best validation `metric` (kept by CheckpointConfig) and its metrics;
    ties go to the earlier epoch."""
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    if not scored:
        raise RuntimeError(
            f"run {result.path} reported no validation metrics (error: {result.error})"
        )
    return max(scored, key=lambda cm: (cm[1][metric], -cm[1]["epoch"]))


def checkpoint_at(result, epoch: int) -> tuple[Checkpoint, dict[str, Any]]:
    """The run's kept checkpoint of `epoch` (the one selection chose) and its metrics."""
    kept = result.best_checkpoints or []
    for checkpoint, metrics in kept:
        if metrics.get("epoch") == epoch:
            return checkpoint, metrics
    epochs = sorted(m.get("epoch") for _, m in kept)
    raise RuntimeError(f"run {result.path} kept no checkpoint of epoch {epoch} (kept: {epochs})")


def prune_checkpoints(storage: str, keep: Collection[str]) -> int:
    """Free the disk of finished Train runs: under `storage` (a local path or URI holding run
    folders), delete every checkpoint not in `keep` (`Checkpoint.path`s) and the optimizer state of
    those kept (a finished run never resumes: only the weights are still used). Returns the bytes
    freed."""
    fs, root = (
        pafs.FileSystem.from_uri(storage) if "://" in storage else (pafs.LocalFileSystem(), storage)
    )
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    checkpoints = {
        f.path
        for f in found
        if f.type == pafs.FileType.Directory and f.base_name.startswith("checkpoint_")
    }
    freed = 0
    for checkpoint in sorted(checkpoints):
        if checkpoint in keep:
            doomed = [f for f in found if f.path == f"{checkpoint}/{STATE_FILE}"]
            for f in doomed:
                fs.delete_file(f.path)
        else:
            doomed = [f for f in found if f.path.startswith(f"{checkpoint}/")]
            fs.delete_dir(checkpoint)
        freed += sum(f.size or 0 for f in doomed if f.type == pafs.FileType.File)
    return freed
