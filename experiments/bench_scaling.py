"""DDP scaling: training samples/s of the same Turbo run with 1 and 2 Ray Train workers (1 CPU and
one torch thread each), alternated in one run.

    python experiments/bench_scaling.py          # 2 alternations, 2 epochs each (the second, warm
                                                 # one is timed)
    python experiments/bench_scaling.py --quick  # 4 utterances/speaker, 1 epoch, 1 alternation: a
                                                 # correctness check

The corpus is the demo's at 40 utterances per speaker (252 training samples: 16 steps of 2 x 8).
Then the machine's own ceiling: the same training step in plain processes (no Ray, DDP or data
feed), one alone and two side by side, which also time the gloo all-reduce of all gradients.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_turbo_step import make_batch

from turbo_ray.config import Config, load_config, override
from turbo_ray.data.corpus import prepare_corpus
from turbo_ray.data.folds import fold_splits
from turbo_ray.data.iemocap import DEFAULT_CLASSES
from turbo_ray.model import build_model
from turbo_ray.runners import build_trainer
from turbo_ray.runtime import init_ray
from turbo_ray.train import build_optimizer, build_scheduler, train_step


def last_epoch(cfg, corpus, fold, name: str) -> tuple[float, float, float]:
    """(samples/s, seconds, seconds rank 0 waited for data) of the last epoch's training part (the
    first epochs warm the data pipeline up). A Train result's history holds the kept checkpoints'
    metrics only, so the run keeps every epoch's (`train.num_to_keep=null`)."""
    splits = fold_splits(fold)
    result = build_trainer(cfg, corpus.shards, splits, corpus.classes, name).fit()
    if result.error:
        raise result.error
    history = result.metrics_dataframe
    last = history[history["epoch"] == cfg.train.epochs].iloc[0]
    seconds = float(last["time_train_s"])
    return len(fold.train) / seconds, seconds, float(last["time_data_wait_s"])


def _side_by_side_worker(rank: int, procs: int, cfg: dict, steps: int, init_file: str, out) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=procs)
    config = Config.from_dict(cfg)
    model = build_model(config, len(DEFAULT_CLASSES.names)).train()
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps=steps + 1)
    batch = make_batch(
        config.data.batch_size,
        config.data.max_seconds,
        24,
        model.text_encoder.model.config.vocab_size,
    )

    def step() -> None:
        train_step(model, batch, optimizer, scheduler, config, torch.device("cpu"))

    step()  # warm-up
    dist.barrier()  # the processes step at the same time
    began = time.perf_counter()
    for _ in range(steps):
        step()
    step_s = (time.perf_counter() - began) / steps

    grads, reduce_s = torch.ones(sum(p.numel() for p in model.parameters() if p.requires_grad)), []
    for _ in range(steps + 1):  # the first one connects and is dropped
        dist.barrier()
        began = time.perf_counter()
        dist.all_reduce(grads)
        reduce_s.append(time.perf_counter() - began)
    out.put((step_s, statistics.median(reduce_s[1:]), grads.numel()))
    dist.destroy_process_group()


def side_by_side(cfg: Config, procs: int, steps: int) -> tuple[float, float, int]:
    """(seconds per training step, seconds per gloo all-reduce of all gradients, number of gradient
    values) with `procs` plain processes stepping at the same time on a synthetic batch (one torch
    thread each; no Ray, DDP or data feed). With 2 processes, the step time bounds what a 2-worker
    run can reach here."""
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(
            _side_by_side_worker,
            args=(procs, cfg.to_dict(), steps, f"{tmp}/store", out),
            nprocs=procs,
        )
    results = [out.get() for _ in range(procs)]
    return max(r[0] for r in results), max(r[1] for r in results), results[0][2]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. data.demo_utterances_per_speaker=80"
    )
    return parser


def alternate(cfg: Config, corpus, fold, repeats: int) -> tuple[dict, dict]:
    """1 and 2 workers, alternated `repeats` times, each run printed: (samples/s, seconds per step
    without data waits) per worker count, one value per repeat."""
    rates: dict[int, list[float]] = {1: [], 2: []}
    step_s: dict[int, list[float]] = {1: [], 2: []}  # per step, data waits excluded
    for r in range(repeats):
        for workers in (1, 2):
            run = override(cfg, {"train.num_workers": workers})
            rate, seconds, waited = last_epoch(run, corpus, fold, f"w{workers}-r{r}")
            rates[workers].append(rate)
            step_s[workers].append(
                (seconds - waited) / -(-len(fold.train) // (workers * cfg.data.batch_size))
            )
            print(
                f"  repeat {r}: {workers} worker(s): {rate:6.1f} samples/s "
                f"({seconds:.1f} s for {len(fold.train)} samples, "
                f"{waited:.1f} s of it waiting for data, "
                f"{step_s[workers][-1]:.2f} s per step otherwise)"
            )
    return rates, step_s


def report(cfg: Config, rates: dict, step_s: dict, repeats: int, steps: int) -> None:
    """Measures the machine's ceiling (plain processes side by side), then prints the summary."""
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    alone, _, _ = side_by_side(cfg, 1, steps)
    paired, reduce_s, params = side_by_side(cfg, 2, steps)
    print(f"1 worker: {one:.1f} samples/s; 2 workers: {two:.1f} samples/s (median of {repeats})")
    print(
        f"per step without data waits: 1 worker {statistics.median(step_s[1]):.2f} s, "
        f"2 workers {statistics.median(step_s[2]):.2f} s"
    )
    print(
        f"all-reduce per step with 2 workers: {params * 4 / 2**20:.1f} MiB of fp32 gradients, "
        f"{reduce_s:.2f} s timed alone (gloo, 1 thread)"
    )
    print(
        f"machine ceiling: a training step (synthetic batch, no Ray/DDP/data) "
        f"takes {alone:.2f} s alone and "
        f"{paired:.2f} s with two processes side by side: at most {2 * alone / paired:.2f}x"
    )
    print(f"speed-up 2 vs 1 workers: {two / one:.2f}")
    print(f"scaling/ceiling (this project): {(two / one) / (2 * alone / paired):.2f}")


def main() -> None:
    args = build_parser().parse_args()
    quick_corpus = ["data.demo_utterances_per_speaker=4", "data.val_fraction=0.3"]
    repeats, epochs, corpus_size = (
        (1, 1, quick_corpus)
        if args.quick
        else (args.repeats, args.epochs, ["data.demo_utterances_per_speaker=40"])
    )
    storage = tempfile.mkdtemp(prefix="bench_scaling_")
    init_ray()
    cfg = load_config(
        None,
        [
            f"train.epochs={epochs}",
            f"train.storage_path={storage}",
            "train.num_to_keep=null",
            *corpus_size,
            *args.overrides,
        ],
    )
    corpus = prepare_corpus(cfg.data)
    fold = corpus.fold(cfg.data)
    rates, step_s = alternate(cfg, corpus, fold, repeats)
    report(cfg, rates, step_s, repeats, steps=2 if args.quick else 10)
    shutil.rmtree(storage)  # kept only when the run fails, for its logs


if __name__ == "__main__":
    main()
