"""DDP scaling: training samples/s of the same Turbo run with 1 and 2 Ray Train workers (1 CPU and one
torch thread each), alternated in one run.

    python experiments/bench_scaling.py            # 2 alternations, 2 epochs each (the second, warm one is timed)
    python experiments/bench_scaling.py --quick    # 1 epoch, 1 alternation: a correctness check, not a speed

The corpus is the demo's at 40 utterances per speaker (252 training samples: 16 steps of 2 x 8).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from turbo_ray.config import load_config, override  # noqa: E402
from turbo_ray.data.corpus import prepare_corpus  # noqa: E402
from turbo_ray.loso import fold_datasets  # noqa: E402
from turbo_ray.model import build_model  # noqa: E402
from turbo_ray.runtime import init_ray  # noqa: E402
from turbo_ray.train import build_trainer  # noqa: E402


def last_epoch(cfg, corpus, fold, name: str) -> tuple[float, float, float]:
    """(samples/s, seconds, seconds rank 0 waited for data) of the last epoch's training part (the first
    epochs warm the data pipeline up)."""
    result = build_trainer(cfg, fold_datasets(cfg, corpus, fold, with_test=False), corpus.classes,
                           len(fold.train), name).fit()
    if result.error:
        raise result.error
    last = result.metrics_dataframe.iloc[-1]
    seconds = float(last["time_train_s"])
    return len(fold.train) / seconds, seconds, float(last["time_data_wait_s"])


def _allreduce_worker(rank: int, numel: int, repeats: int, init_file: str, out) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    grads, times = torch.ones(numel), []
    for _ in range(repeats + 1):  # the first one connects and is dropped
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(grads)
        times.append(time.perf_counter() - start)
    if rank == 0:
        out.put(statistics.median(times[1:]))
    dist.destroy_process_group()


def allreduce_seconds(numel: int, repeats: int) -> float:
    """Median seconds of one gloo all-reduce of `numel` fp32 values between two local processes (one
    torch thread each): what DDP sends per step, timed alone (DDP overlaps it with backward)."""
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_allreduce_worker, args=(numel, repeats, f"{tmp}/store", out), nprocs=2)
    return out.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.demo_utterances_per_speaker=80")
    args = parser.parse_args()
    repeats, epochs, per_speaker = (1, 1, 10) if args.quick else (args.repeats, args.epochs, 40)
    storage = tempfile.mkdtemp(prefix="bench_scaling_")
    init_ray()
    cfg = load_config(None, [f"train.epochs={epochs}", f"train.storage_path={storage}", "train.num_to_keep=1",
                             f"data.demo_utterances_per_speaker={per_speaker}", *args.overrides])
    corpus = prepare_corpus(cfg.data)
    fold = corpus.fold(cfg.data)

    rates: dict[int, list[float]] = {1: [], 2: []}
    step_s: dict[int, list[float]] = {1: [], 2: []}  # per step, data waits excluded
    for r in range(repeats):
        for workers in (1, 2):
            run = override(cfg, {"train.num_workers": workers})
            rate, seconds, waited = last_epoch(run, corpus, fold, f"w{workers}-r{r}")
            rates[workers].append(rate)
            step_s[workers].append((seconds - waited) / -(-len(fold.train) // (workers * cfg.data.batch_size)))
            print(f"  repeat {r}: {workers} worker(s): {rate:6.1f} samples/s "
                  f"({seconds:.1f} s for {len(fold.train)} samples, {waited:.1f} s of it waiting for data, "
                  f"{step_s[workers][-1]:.2f} s per step otherwise)")
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    params = sum(p.numel() for p in build_model(cfg).parameters() if p.requires_grad)
    reduce_s = allreduce_seconds(params, 3 if args.quick else 10)
    print(f"1 worker: {one:.1f} samples/s; 2 workers: {two:.1f} samples/s (median of {repeats})")
    print(f"per step without data waits: 1 worker {statistics.median(step_s[1]):.2f} s, "
          f"2 workers {statistics.median(step_s[2]):.2f} s")
    print(f"all-reduce per step with 2 workers: {params * 4 / 2**20:.1f} MiB of fp32 gradients, "
          f"{reduce_s:.2f} s timed alone (gloo, 1 thread)")
    print(f"speed-up 2 vs 1 workers: {two / one:.2f}")


if __name__ == "__main__":
    main()
