"""What ASHA buys: the same proposed configs under ASHA and run to the end, side by side.

    python experiments/bench_search.py               # fold 1, 8 configs of 4 epochs
    python experiments/bench_search.py --quick       # checks that it runs, not a measurement

On one outer fold of the demo corpus, a search as the main job runs it (TPE proposes, ASHA stops
trials on their best validation score so far) picks N configs; then the same N configs, in the same
order, run every epoch (ASHA with a grace period of all epochs stops nobody). For each: the
trial-epochs trained, the wall time, and the config each selects on validation, with its validation
UA and its test UA (its selected checkpoint on the fold's test session, as the main job tests it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray

from turbo_ray.config import load_config, override
from turbo_ray.data.corpus import prepare_corpus
from turbo_ray.evaluation import recorded_test_row
from turbo_ray.paths import RunPaths
from turbo_ray.progress import ray_logs_in
from turbo_ray.runtime import init_ray
from turbo_ray.search_space import SearchSpace, load_search_space
from turbo_ray.trials import FOLD_TRIAL, best_trials, searched, trial_table
from turbo_ray.tune import run_search


def search(cfg, corpus, fold, space: SearchSpace, out: Path) -> dict:
    """One search on `fold`: what it cost and what it selected."""
    paths = RunPaths.of(out, cfg.train.storage_path)
    started = time.perf_counter()
    grid = run_search(cfg, [fold], space, corpus, paths)
    wall = time.perf_counter() - started
    trials = trial_table(grid, space, cfg)
    ((key, selected),) = best_trials(grid, cfg).items()  # one search
    row = recorded_test_row(cfg, corpus, fold, key, selected, paths)
    return {
        "trial-epochs": int(trials.epochs.sum()),
        "wall s": wall,
        "selected": int(selected.config[FOLD_TRIAL]),
        "val UA": 100 * row[cfg.tune.metric],
        "test UA": 100 * row["ua"],
        "configs": [searched(r.config) for r in sorted(grid, key=lambda r: r.config[FOLD_TRIAL])],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--configs", type=int, default=8, help="configs proposed (N)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.max_seconds=1")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    configs, epochs = (1, 1) if args.quick else (args.configs, args.epochs)
    cfg = load_config(
        None, [f"tune.num_samples={configs}", f"train.epochs={epochs}", *args.overrides]
    )
    corpus = prepare_corpus(cfg.data)
    fold = corpus.folds(cfg.data)[0]
    space = load_search_space(cfg.tune.search_space)
    tmp = Path(tempfile.mkdtemp(prefix="bench_search_"))
    with ray_logs_in(tmp / "ray.log") as log:  # Ray's loggers write there, not here
        print(f"Ray's own log: {log}")
        init_ray()

        asha = search(cfg, corpus, fold, space, tmp / "asha")
        # the same configs, in the same order, each trained for every epoch
        full_cfg = override(cfg, {"tune.grace_period": epochs})
        full_space = SearchSpace(space.params, start=asha["configs"])
        full = search(full_cfg, corpus, fold, full_space, tmp / "full")
        assert full["configs"] == asha["configs"], "the configs differ"
        ray.shutdown()  # before the summary: nothing of Ray's is printed after it

    print(
        f"fold {fold.number}: {configs} configs proposed by TPE, {epochs} epochs each, "
        f"ASHA grace {cfg.tune.grace_period} reduction {cfg.tune.reduction_factor}"
    )
    print(f"  {'':16}{'trial-epochs':>13}{'wall s':>9}{'selected':>10}{'val UA':>8}{'test UA':>9}")
    for name, run in (("under ASHA", asha), ("run to the end", full)):
        print(
            f"  {name:16}{run['trial-epochs']:>13}{run['wall s']:>9.0f}"
            f"{'config ' + str(run['selected']):>10}{run['val UA']:>8.1f}{run['test UA']:>9.1f}"
        )
    print(f"selected val UA, ASHA - full: {asha['val UA'] - full['val UA']:+.1f} points")
    print(f"asha/full wall: {asha['wall s'] / full['wall s']:.2f}")
    print(f"asha/full trial-epochs: {asha['trial-epochs'] / full['trial-epochs']:.2f}")
    shutil.rmtree(tmp)  # kept only when the run fails, for its logs


if __name__ == "__main__":
    main()
