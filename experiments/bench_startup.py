"""A trial's start-up, as the main job starts its trials, against the import floor, side by side.

    python experiments/bench_startup.py              # 3 searches of 3 trials, and a 2-worker one
    python experiments/bench_startup.py --quick      # checks that it runs, not a speed

import floor   a fresh `python -c "import turbo_ray.train"` (median of several, interleaved with the
               searches): what any process that trains must pay once; also with the default model
               built, since transformers imports the encoders' modeling code only then
trial start-up a search on fold 1 of one-epoch trials, one at a time (one lane), started as
               `turbo-ray tune` starts them, timed to rank 0's wall-clock stamps (reported with
               every epoch): the lane's first trial from the Tuner's fit call (a new process:
               Tune's trial actor, Ray Data's tasks); each later trial from the end of the one
               before (a process Tune reuses). Searches after the first find Ray's worker pool
               warm, as every search on a running cluster does.
two workers    the same with `train.num_workers=2`: each trial drives a TorchTrainer (its controller
               and workers are new processes every time)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray
from ray.tune import Callback

from turbo_ray.config import load_config, override
from turbo_ray.data.corpus import prepare_corpus
from turbo_ray.paths import RunPaths
from turbo_ray.progress import ray_logs_in
from turbo_ray.runtime import init_ray
from turbo_ray.search_space import load_search_space
from turbo_ray.trials import FOLD, FOLD_TRIAL
from turbo_ray.tune import run_search

STAMPS = ("at_worker_start", "at_first_batch", "at_first_step")


IMPORT = "import turbo_ray.train"
# what a training process also pays before its first step: transformers imports the encoders'
# modeling code lazily, when the model is built
BUILD = (
    f"{IMPORT}; from turbo_ray.config import Config; from turbo_ray.model import build_model; "
    "build_model(Config(), 4)"
)


def floor(code: str) -> float:
    """Seconds for a fresh interpreter to run `code`."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


class TrialEnds(Callback):
    """The wall-clock time each trial ended, by its launch order."""

    def __init__(self):
        self.ended: dict[int, float] = {}

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended[trial.config[FOLD_TRIAL]] = time.time()


def one_search(cfg, corpus, space, out: Path) -> list[dict[str, float]]:
    """Per trial, in launch order: seconds from its start (the fit call for the first, the end of
    the one before for the others) to each of its first epoch's stamps."""
    ends, started = TrialEnds(), time.time()
    paths = RunPaths.of(out, cfg.train.storage_path)
    grid = run_search(cfg, corpus.folds(cfg.data)[:1], space, corpus, paths, callbacks=[ends])
    firsts = {}
    for result in grid:
        history = result.metrics_dataframe
        if history is None or STAMPS[-1] not in history:
            raise RuntimeError(f"a trial reported no epoch: {result.error}")
        assert result.config[FOLD] == 1
        firsts[result.config[FOLD_TRIAL]] = history.sort_values("epoch").iloc[0]
    begins = [started] + [ends.ended[k] for k in sorted(firsts)[:-1]]
    return [
        {stamp: float(firsts[k][stamp]) - begin for stamp in STAMPS}
        for k, begin in zip(sorted(firsts), begins)
    ]


def describe(stamps: dict[str, float]) -> str:
    return ", ".join(f"{k[3:]} {v:.1f} s" for k, v in stamps.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--searches", type=int, default=3)
    parser.add_argument("--trials", type=int, default=3, help="trials per search (one lane)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.max_seconds=1")
    return parser


def lanes(cfg, corpus, space, searches: int, floors_each: int, tmp: Path) -> dict[str, list]:
    """`searches` searches of one lane, each after `floors_each` import floors and one build
    floor, each trial printed: the floors, builds, first trials' and reused trials' first steps."""
    floors, builds, firsts, reused = [], [], [], []
    for search in range(searches):
        floors += [floor(IMPORT) for _ in range(floors_each)]
        builds.append(floor(BUILD))
        lane = one_search(cfg, corpus, space, tmp / f"search{search}")
        pool, opening = "cold" if search == 0 else "warm", describe(lane[0])
        print(f"  search {search} ({pool} pool), trial 0 (new process): from fit to {opening}")
        for k, stamps in enumerate(lane[1:], 1):
            print(
                f"  search {search}, trial {k} (reused process): from the end of trial {k - 1} "
                f"to {describe(stamps)}"
            )
        firsts.append(lane[0]["at_first_step"])
        reused += [s["at_first_step"] for s in lane[1:]]
    return {"floors": floors, "builds": builds, "firsts": firsts, "reused": reused}


def summary(times: dict[str, list], ddp: dict[str, float]) -> None:
    """Prints the floors and each kind of trial's first step, and the ratios."""
    floors, builds, firsts, reused = (times[k] for k in ("floors", "builds", "firsts", "reused"))
    imported, built = statistics.median(floors), statistics.median(builds)
    warm = firsts[1:] or firsts
    first, again = statistics.median(warm), statistics.median(reused)
    print(f"import floor (fresh `{IMPORT}`, median of {len(floors)}): {imported:.1f} s")
    print(f"the same and the default model built (median of {len(builds)}): {built:.1f} s")
    print(
        f"first step of a lane's first trial, median of {len(warm)} "
        f"{'warm' if firsts[1:] else 'cold'} search(es): {first:.1f} s (cold: {firsts[0]:.1f} s); "
        f"of a reused trial, median of {len(reused)}: {again:.1f} s; "
        f"of a two-worker trial: {ddp['at_first_step']:.1f} s"
    )
    print(f"startup/(import and model built): {first / built:.2f}")
    print(f"two-worker trial/import: {ddp['at_first_step'] / imported:.2f}")
    print(f"reused trial/import: {again / imported:.2f}")
    print(f"startup/import (this project): {first / imported:.2f}")


def main() -> None:
    args = build_parser().parse_args()
    # quick: one search of two trials (a new process, then a reused one), one import of each floor
    searches, trials, floors_each = (1, 2, 1) if args.quick else (args.searches, args.trials, 2)
    tmp = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    with ray_logs_in(tmp / "ray.log") as log:  # Ray's loggers write there, not here
        print(f"Ray's own log: {log}")
        cfg = load_config(
            None,
            [
                "train.epochs=1",
                f"tune.num_samples={trials}",
                "tune.max_concurrent_trials=1",
                *args.overrides,
            ],
        )
        corpus = prepare_corpus(cfg.data)
        space = load_search_space(cfg.tune.search_space)
        init_ray()

        times = lanes(cfg, corpus, space, searches, floors_each, tmp)
        two = override(cfg, {"train.num_workers": 2, "tune.num_samples": 1})
        ddp = one_search(two, corpus, space, tmp / "two-workers")[0]
        print(f"  two workers (TorchTrainer), warm pool: from fit to {describe(ddp)}")
        ray.shutdown()  # before the summary: nothing of Ray's is printed after it

    summary(times, ddp)
    shutil.rmtree(tmp)  # kept only when the run fails, for its logs


if __name__ == "__main__":
    main()
