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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

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
    for r in range(repeats):
        for workers in (1, 2):
            run = override(cfg, {"train.num_workers": workers})
            rate, seconds, waited = last_epoch(run, corpus, fold, f"w{workers}-r{r}")
            rates[workers].append(rate)
            print(f"  repeat {r}: {workers} worker(s): {rate:6.1f} samples/s "
                  f"({seconds:.1f} s for {len(fold.train)} samples, {waited:.1f} s of it waiting for data)")
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    params = sum(p.numel() for p in build_model(cfg).parameters() if p.requires_grad)
    steps = -(-len(fold.train) // (2 * cfg.data.batch_size))
    print(f"1 worker: {one:.1f} samples/s; 2 workers: {two:.1f} samples/s (median of {repeats})")
    print(f"all-reduce per step with 2 workers: {params * 4 / 2**20:.1f} MiB of fp32 gradients, {steps} steps/epoch")
    print(f"speed-up 2 vs 1 workers: {two / one:.2f}")


if __name__ == "__main__":
    main()
