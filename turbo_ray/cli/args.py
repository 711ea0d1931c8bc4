"""What the subcommands share: the `Command` record, the flags of the two jobs (`train`, `tune`),
and the one table that turns flags into config keys. A flag name means the same in every
subcommand that has it; a flag that sets a config key has no default of its own (argparse's is
None, and its help shows the config's)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from turbo_ray.config import MODES, PRESETS, Config, load_config
from turbo_ray.errors import ConfigError

DEFAULTS = Config()  # the built-in config: the defaults the help texts show

DATA_DIR_HELP = (
    "a corpus folder: IEMOCAP_full_release, or a folder with a metadata.csv (jobs without it use "
    "the generated demo corpus; predict scores its labels)"
)


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, what it does (its help), the flags it declares, its handler
    (returns the exit code)."""

    name: str
    help: str
    flags: Callable[[argparse.ArgumentParser], object]
    run: Callable[[argparse.Namespace], int]


def seeds_from(flag: str) -> list[int]:
    """--seeds 0,1,2 as integers; anything else is a one-line error."""
    try:
        return [int(seed) for seed in flag.split(",")]
    except ValueError:
        raise ConfigError(
            f"--seeds {flag!r}: expected comma-separated integers, e.g. 0,1,2"
        ) from None


def modes_from(flag: str) -> list[str]:
    """--modes baseline,turbo as a list (the config checks the names)."""
    return flag.split(",")


# argparse dest → (the config key its flag sets, how the flag's value becomes the key's; None: as
# argparse parsed it)
CONFIG_FLAGS: dict[str, tuple[str, Callable[[Any], Any] | None]] = {
    "data_dir": ("data.data_dir", None),
    "shards_dir": ("data.shards_dir", None),
    "preset": ("model.preset", None),
    "num_workers": ("train.num_workers", None),
    "use_gpu": ("train.use_gpu", None),
    "gpus_per_worker": ("train.gpus_per_worker", None),
    "search_space": ("tune.search_space", None),
    "num_samples": ("tune.num_samples", None),
    "max_concurrent_trials": ("tune.max_concurrent_trials", None),
    "trials_at_once": ("tune.trials_at_once", None),
    "modes": ("tune.modes", modes_from),
    "seeds": ("tune.seeds", seeds_from),
    "folds": ("tune.folds", None),
    "final": ("tune.final", None),
}


def config_from_args(args: argparse.Namespace) -> Config:
    """The config file, then the flags given (`CONFIG_FLAGS`), then the dotted overrides: the last
    word wins."""
    values = {}
    for dest, (key, parse) in CONFIG_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            values[key] = parse(value) if parse else value
    if (getattr(args, "gpus_per_worker", None) or 0) > 0:
        values["train.use_gpu"] = True
    # JSON is YAML: each value reads back as given (a path with ': ' or '#' stays a string)
    flags = [f"{key}={json.dumps(value)}" for key, value in values.items()]
    return load_config(args.config, flags + list(args.overrides))


def sets(key: str, unset: str = "") -> str:
    """The end of a config flag's help: the key it sets and the built-in default (`unset` where
    that is None)."""
    section, name = key.split(".")
    value = getattr(getattr(DEFAULTS, section), name)
    if isinstance(value, bool):
        return f"(sets {key})"
    return f"(sets {key}; default: {unset if value is None else value})"


def config_flags(parser: argparse.ArgumentParser) -> None:
    """The config file and the dotted overrides."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config file (sections data, model, loss, train, tune)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="dotted overrides applied after the file and the flags, e.g. loss.temperature=0.1",
    )


def data_dir_flag(parser: argparse._ActionsContainer) -> None:
    """--data-dir, in a parser or a group (predict's inputs)."""
    parser.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)


def job_flags(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """The flags `train` and `tune` share: the config, where and on what it runs, and the
    protocol's modes, seeds, folds and final model. Returns the group of --folds (`train` adds
    --fold, which excludes it)."""
    config_flags(parser)
    data_dir_flag(parser)
    run_flags(parser)
    return protocol_flags(parser)


def run_flags(parser: argparse.ArgumentParser) -> None:
    """Where and on what a job runs."""
    parser.add_argument(
        "--preset",
        metavar="NAME",
        help=f"encoder preset: {', '.join(PRESETS)} {sets('model.preset')}",
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        metavar="N",
        help=f"Ray Train workers per run or trial (DDP, one per GPU) {sets('train.num_workers')}",
    )
    parser.add_argument(
        "--use-gpu",
        action="store_const",
        const=True,
        help=f"train on GPUs, bf16 autocast {sets('train.use_gpu')}",
    )
    parser.add_argument(
        "--gpus-per-worker",
        type=float,
        metavar="G",
        help=f"GPUs per worker; > 0 implies --use-gpu {sets('train.gpus_per_worker')}",
    )
    parser.add_argument(
        "--address", help="join a running Ray cluster ('auto' on a `ray up` head node)"
    )
    parser.add_argument(
        "--output-dir", metavar="DIR", help="experiment folder (default: runs/<job>-<time>)"
    )


def protocol_flags(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """What a job runs: once per mode and seed, over which outer folds, and whether a final
    model."""
    parser.add_argument(
        "--modes",
        metavar="A,B",
        help=f"comma-separated subset of {','.join(MODES)}: the whole protocol once per mode, "
        f"compared with the baseline {sets('tune.modes', 'loss.mode alone')}",
    )
    parser.add_argument(
        "--seeds",
        metavar="0,1,2",
        help="comma-separated training seeds: the whole protocol once per seed "
        f"{sets('tune.seeds', 'train.seed alone')}",
    )
    parser.add_argument(
        "--final",
        action="store_const",
        const=True,
        help="also a final model, trained as each fold's was (tune: a search of the same budget) "
        "on all of the corpus, exported to <output-dir>/model; the outer folds' scores are its "
        f"estimate {sets('tune.final')}",
    )
    folds = parser.add_mutually_exclusive_group()
    folds.add_argument(
        "--folds",
        type=int,
        metavar="N",
        help=f"the first N outer folds {sets('tune.folds', 'every outer fold')}",
    )
    return folds
