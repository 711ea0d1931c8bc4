"""Does this project run on this machine's GPUs? Four checks, each printed PASS or FAIL with its
time; the exit status is 1 if any failed. Without CUDA it says so and exits 0.

    python experiments/gpu_check.py

(a) bf16 step    a base-sized Turbo step (wav2vec2-base + BERT-base shapes, random weights, nothing
                 downloaded) under bf16 autocast: the losses are finite and the Turbo/baseline step
                 ratio is within 5 % of its floor (P + 2S) / (P + S) (see bench_turbo_step.py)
(b) one GPU      a one-worker TorchTrainer with `train.use_gpu` trains and validates one epoch of
                 fold 1 on the demo corpus
(c) shared GPU   two Tune trials of 0.5 GPU each (`train.gpus_per_worker=0.5`) run at the same time
                 and both finish
(d) NCCL         the contrastive losses with the embeddings all-gathered over 2 GPUs (NCCL) equal
                 the one-process losses on the whole batch (needs 2 GPUs; reported as not run with
                 fewer)
"""

from __future__ import annotations

import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_turbo_step import base_sized_model, floor, make_batch, step_times

from turbo_ray.config import load_config
from turbo_ray.data.corpus import prepare_corpus
from turbo_ray.data.folds import fold_splits
from turbo_ray.losses import LossWeights, objective
from turbo_ray.model.turbo import TurboOutput
from turbo_ray.paths import RunPaths
from turbo_ray.runners import build_trainer
from turbo_ray.runtime import init_ray
from turbo_ray.search_space import load_search_space
from turbo_ray.train import build_optimizer, build_scheduler, train_step
from turbo_ray.tune import run_search

CUDA = torch.device("cuda")


class CheckFailed(AssertionError):
    pass


def bf16_step() -> str:
    cfg = load_config(None, ["loss.mode=turbo", "train.precision=bf16"])
    torch.manual_seed(0)
    model = base_sized_model(cfg).to(CUDA).train()
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps=10)
    batch = make_batch(8, 2.0, 24, model.text_encoder.model.config.vocab_size)
    parts = train_step(model, batch, optimizer, scheduler, cfg, CUDA)
    if not all(math.isfinite(v.item()) for v in parts.values()):
        raise CheckFailed(f"non-finite losses in bf16: {parts}")
    med = step_times(model, cfg, 8, 2.0, rounds=10, device=CUDA)
    ratio, least = med["turbo"] / med["baseline"], floor(med)
    detail = (
        f"turbo/baseline {ratio:.3f}, floor {least:.3f}, "
        f"naive {med['naive'] / med['baseline']:.3f} "
        f"(baseline {1000 * med['baseline']:.0f} ms/step, batch 8 x 2 s)"
    )
    if ratio > 1.05 * least:
        raise CheckFailed(detail)
    return detail


def demo_config(storage: str, *overrides: str):
    return load_config(
        None,
        [
            "train.use_gpu=true",
            "train.epochs=1",
            "train.num_to_keep=1",
            f"train.storage_path={storage}",
            *overrides,
        ],
    )


def one_gpu_epoch(storage: str) -> str:
    cfg = demo_config(storage)
    corpus = prepare_corpus(cfg.data)
    fold = corpus.fold(cfg.data)
    splits = fold_splits(fold)
    result = build_trainer(cfg, corpus.shards, splits, corpus.classes, "gpu-check").fit()
    if result.error:
        raise CheckFailed(f"the run failed: {result.error}")
    m = result.metrics
    if not math.isfinite(m["train_total"]):
        raise CheckFailed(f"training loss {m['train_total']}")
    return f"train loss {m['train_total']:.3f}, val UA {m['val_ua']:.3f}"


def shared_gpu(storage: str) -> str:
    cfg = demo_config(
        storage,
        "train.gpus_per_worker=0.5",
        "tune.num_samples=2",
        "tune.max_concurrent_trials=2",
    )
    corpus = prepare_corpus(cfg.data)
    paths = RunPaths.of(Path(storage) / "shared", storage)
    space = load_search_space(cfg.tune.search_space)
    grid = run_search(cfg, [corpus.fold(cfg.data)], space, corpus, paths)
    if grid.errors:
        raise CheckFailed(f"{len(grid.errors)} trial(s) failed: {grid.errors[0]}")
    spans = [(r.metrics_dataframe.at_first_step.min(), r.metrics["timestamp"]) for r in grid]
    if len(spans) != 2 or max(s for s, _ in spans) >= min(e for _, e in spans):
        raise CheckFailed(f"the trials did not train at the same time: {spans}")
    return "2 trials on one GPU, their training overlapped"


def _nccl_rank(rank: int, port: int, out: str) -> None:
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
        audio, text, logits, labels = (t.to(device) for t in _embeddings())
        half = labels.shape[0] // 2
        local = slice(rank * half, (rank + 1) * half)
        output = TurboOutput(
            logits[local].repeat(2, 1),
            audio[:, local],
            text[:, local],
            torch.tensor(0.07, device=device),
        )
        parts = objective(output, labels[local], LossWeights(w_in=0.7, w_cross=1.3))
        torch.save({k: v.item() for k, v in parts.items()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _embeddings() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, 16, 32, generator=g),
        torch.randn(2, 16, 32, generator=g),
        torch.randn(16, 4, generator=g),
        torch.arange(16) % 4,
    )


def nccl_gather() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_nccl_rank, args=(port, out), nprocs=2, join=True)
        ranks = [torch.load(f"{out}/rank{r}.pt") for r in range(2)]
    audio, text, logits, labels = (t.to(CUDA) for t in _embeddings())
    single = objective(
        TurboOutput(logits.repeat(2, 1), audio, text, torch.tensor(0.07, device=CUDA)),
        labels,
        LossWeights(w_in=0.7, w_cross=1.3),
    )
    gaps = {k: max(abs(r[k] - single[k].item()) for r in ranks) for k in ("in", "cross")}
    if max(gaps.values()) > 1e-4:
        raise CheckFailed(f"gathered vs one-process loss differ: {gaps}")
    return f"largest difference {max(gaps.values()):.1e} (in-modal and cross-modal)"


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check (exit 0)")
        return 0
    gpus = torch.cuda.device_count()
    print(f"gpu_check: {gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    storage = tempfile.mkdtemp(prefix="gpu_check_")
    init_ray()
    checks = {
        "(a) bf16 step": bf16_step,
        "(b) one GPU": lambda: one_gpu_epoch(storage),
        "(c) shared GPU": lambda: shared_gpu(storage),
        "(d) NCCL": nccl_gather if gpus >= 2 else None,
    }
    failed = 0
    for name, check in checks.items():
        if check is None:
            print(f"{name}: NOT RUN (needs 2 GPUs, this machine has {gpus})")
            continue
        began = time.perf_counter()
        try:
            verdict, detail = "PASS", check()
        except Exception as err:  # a check's failure is its report; the next check still runs
            verdict, detail, failed = "FAIL", f"{type(err).__name__}: {err}", failed + 1
        print(f"{name}: {verdict} in {time.perf_counter() - began:.1f} s: {detail}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
