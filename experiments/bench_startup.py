"""Start-up of one training run as the main job starts it, against the import floor, side by side.

    python experiments/bench_startup.py              # 3 runs
    python experiments/bench_startup.py --quick      # 1 run: checks that it runs, not a speed

import floor   a fresh `python -c "import turbo_ray.train"` (median of several, interleaved with the
               runs): what any process that trains must pay once
run start-up   a one-trial, one-epoch search on fold 1, started as `turbo-ray tune` starts trials
               (Tune trial → TorchTrainer → workers → Ray Data), from the Tuner's fit call to the
               workers' entry, to the first batch and to the first training step (rank 0's
               wall-clock stamps); runs after the first find Ray's worker pool warm, as every trial
               of a search but its first does
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray

from turbo_ray.config import load_config
from turbo_ray.data.corpus import prepare_corpus
from turbo_ray.paths import RunPaths
from turbo_ray.runtime import init_ray
from turbo_ray.tune import load_search_space, run_search

STAMPS = ("at_worker_start", "at_first_batch", "at_first_step")


def import_floor() -> float:
    """Seconds for a fresh interpreter to import the training module."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import turbo_ray.train"], check=True)
    return time.perf_counter() - started


def one_run(cfg, corpus, space, out: Path) -> dict[str, float]:
    """Seconds from the Tuner's fit call to each of the first epoch's stamps."""
    fold = corpus.fold(cfg.data)
    started = time.time()
    grid = run_search(cfg, [fold], space, corpus, RunPaths.of(out, cfg.train.storage_path))
    history = grid[0].metrics_dataframe
    if history is None or STAMPS[-1] not in history:
        raise RuntimeError(f"the run reported no epoch: {grid[0].error}")
    first = history.sort_values("epoch").iloc[0]
    return {stamp: float(first[stamp]) - started for stamp in STAMPS}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.num_workers=1")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    tmp = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    cfg = load_config(
        None,
        ["train.epochs=1", "tune.num_samples=1", "tune.folds=1", *args.overrides],
    )
    corpus = prepare_corpus(cfg.data)
    space = load_search_space(cfg.tune.search_space)
    init_ray()

    floors, starts = [], []
    for run in range(runs):
        floors += [import_floor() for _ in range(2)]
        starts.append(one_run(cfg, corpus, space, tmp / f"run{run}"))
        line = ", ".join(f"{k[3:]} {v:.1f} s" for k, v in starts[-1].items())
        print(f"  run {run} ({'cold' if run == 0 else 'warm'} pool): from fit to {line}")
    ray.shutdown()  # before the summary: nothing of Ray's is printed after it
    floor = statistics.median(floors)
    warm = starts[1:] or starts
    step = statistics.median(s["at_first_step"] for s in warm)
    batch = statistics.median(s["at_first_batch"] for s in warm)
    print(f"import floor (fresh `import turbo_ray.train`, median of {len(floors)}): {floor:.1f} s")
    print(
        f"run start-up, median of {len(warm)} {'warm' if starts[1:] else 'cold'} run(s): "
        f"first batch {batch:.1f} s, first step {step:.1f} s (cold run: "
        f"{starts[0]['at_first_step']:.1f} s)"
    )
    print(f"startup/import (this project): {step / floor:.2f}")


if __name__ == "__main__":
    main()
