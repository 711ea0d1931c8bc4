"""DDP scaling: training samples/s of the same Turbo run with 1 and 2 Ray Train workers (1 CPU and one
torch thread each), alternated in one run.

    python experiments/bench_scaling.py            # 2 alternations, 3 epochs each (the last, warm one is timed)
    python experiments/bench_scaling.py --quick    # 1 epoch, 1 alternation: a correctness check, not a speed
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from turbo_ray.config import load_config, override  # noqa: E402
from turbo_ray.data.corpus import prepare_corpus  # noqa: E402
from turbo_ray.loso import fold_datasets  # noqa: E402
from turbo_ray.model import build_model  # noqa: E402
from turbo_ray.runtime import init_ray  # noqa: E402
from turbo_ray.train import build_trainer  # noqa: E402


def epoch_rate(cfg, corpus, fold, name: str) -> tuple[float, float]:
    """(samples/s, seconds) of the last epoch's training part (first epochs warm the data pipeline up)."""
    result = build_trainer(cfg, fold_datasets(cfg, corpus, fold, with_test=False), corpus.classes,
                           len(fold.train), name).fit()
    if result.error:
        raise result.error
    last = result.metrics_dataframe.iloc[-1]
    return len(fold.train) / last["time_train_s"], float(last["time_train_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.demo_utterances_per_speaker=40")
    args = parser.parse_args()
    repeats, epochs = (1, 1) if args.quick else (args.repeats, args.epochs)
    storage = tempfile.mkdtemp(prefix="bench_scaling_")
    init_ray()
    cfg = load_config(None, [f"train.epochs={epochs}", f"train.storage_path={storage}", "train.num_to_keep=1",
                             *args.overrides])
    corpus = prepare_corpus(cfg.data)
    fold = corpus.fold(cfg.data)

    rates: dict[int, list[float]] = {1: [], 2: []}
    for r in range(repeats):
        for workers in (1, 2):
            rate, seconds = epoch_rate(override(cfg, {"train.num_workers": workers}), corpus, fold, f"w{workers}-r{r}")
            rates[workers].append(rate)
            print(f"  repeat {r}: {workers} worker(s): {rate:6.1f} samples/s "
                  f"({seconds:.1f} s for {len(fold.train)} samples)")
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    params = sum(p.numel() for p in build_model(cfg).parameters() if p.requires_grad)
    steps = -(-len(fold.train) // (2 * cfg.data.batch_size))
    print(f"1 worker: {one:.1f} samples/s; 2 workers: {two:.1f} samples/s (median of {repeats})")
    print(f"all-reduce per step with 2 workers: {params * 4 / 2**20:.1f} MiB of fp32 gradients, {steps} steps/epoch")
    print(f"speed-up 2 vs 1 workers: {two / one:.2f}")


if __name__ == "__main__":
    main()
