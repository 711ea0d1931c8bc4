"""The two jobs: `tune` (the main job, a nested search per outer fold) and `train` (one given
config over the outer folds). Both set the same config keys from the same flags (`job_flags`);
turbo_ray/experiment.py runs them, this module prints what they did."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from turbo_ray.cli.args import Command, config_from_args, job_flags, sets
from turbo_ray.paths import is_uri

if TYPE_CHECKING:
    from turbo_ray.job import JobResult


def tune_flags(parser: argparse.ArgumentParser) -> None:
    job_flags(parser)
    parser.add_argument(
        "--search-space",
        metavar="FILE",
        help=f"YAML of dotted key → distribution {sets('tune.search_space')}",
    )
    parser.add_argument(
        "--num-samples", type=int, metavar="N", help=f"trials per search {sets('tune.num_samples')}"
    )
    parser.add_argument(
        "--max-concurrent-trials",
        type=int,
        metavar="N",
        help=f"trials running at once, over all searches {sets('tune.max_concurrent_trials')}",
    )
    parser.add_argument(
        "--trials-at-once",
        type=int,
        metavar="N",
        help="trials running at once per search; the same trials on any cluster "
        f"{sets('tune.trials_at_once')}",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted experiment in --output-dir (default: the newest "
        "runs/tune-*), with its own saved config",
    )


def cmd_tune(args: argparse.Namespace) -> int:
    from turbo_ray.experiment import run_nested

    result = run_nested(
        config_from_args(args), output_dir(args), resume=args.resume, address=args.address
    )
    print(f"\n{result.selection()}")
    print(report(result))
    return 0


TUNE = Command(
    "tune",
    "the main job: per outer fold, a nested search (TPE + ASHA, trained and validated on the "
    "other outer folds only) whose selected checkpoint is tested once on that fold",
    tune_flags,
    cmd_tune,
)


def train_flags(parser: argparse.ArgumentParser) -> None:
    folds = job_flags(parser)
    folds.add_argument(
        "--fold", type=int, metavar="K", help="outer fold K only (its number in the results table)"
    )


def cmd_train(args: argparse.Namespace) -> int:
    from turbo_ray.experiment import run_fixed

    result = run_fixed(
        config_from_args(args), output_dir(args), fold=args.fold, address=args.address
    )
    print(report(result))
    return 0


TRAIN = Command(
    "train",
    "one given config over the outer folds: a Train run per fold, tested at its best "
    "validation epoch",
    train_flags,
    cmd_train,
)


def output_dir(args: argparse.Namespace) -> Path | None:
    return Path(args.output_dir) if args.output_dir else None


def report(result: JobResult) -> str:
    """What a finished job printed: its test table, the comparison with the baseline, the final
    model, the files it wrote, and how to look at it."""
    lines = [f"\n{result.table()}\n"]
    if compared := result.compared():
        lines.append(f"{compared}\n")
    if result.model:
        lines.append(
            f"final model: {result.model} (the table above estimates it; "
            f"turbo-ray predict {result.model} --wav FILE --text TEXT)\n"
        )
    lines += [f"wrote {path}" for path in result.files]
    return "\n".join(lines) + "\n" + watch_commands(result)


def watch_commands(result: JobResult) -> str:
    """How to look at the finished experiment: MLflow's UI, TensorBoard (a search's), and the
    dashboard (of a cluster that outlives the job)."""
    lines = [
        "\nCompare the runs:",
        f"  MLflow:      {result.tracker.ui_command()}   (then http://127.0.0.1:5000)",
    ]
    search = result.paths.search
    if result.nested and not is_uri(search):  # Tune's event files, here
        tensorboard = Path(sys.executable).parent / "tensorboard"
        lines.append(f"  TensorBoard: {os.path.relpath(tensorboard)} --logdir {search}")
    if not result.joined:
        lines.append(
            "  The Ray dashboard lived as long as this job's local Ray; to keep one, start Ray "
            "first (`ray start --head --resources '{\"train_driver\": 64}'`): jobs join it "
            "(docs/watching.md)."
        )
    return "\n".join(lines)
