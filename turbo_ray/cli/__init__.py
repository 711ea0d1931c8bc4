"""`turbo-ray` command line: one subcommand per job (the experiments/ scripts call the same code).
It parses and prints; turbo_ray/experiment.py and the other modules do the work."""

from __future__ import annotations

import argparse
import sys

from turbo_ray.cli.args import Command
from turbo_ray.cli.clusters import CHECK_CLUSTER, LOCAL_CLUSTER
from turbo_ray.cli.jobs import TRAIN, TUNE
from turbo_ray.cli.serving import SERVE
from turbo_ray.cli.tools import CONFIG, EXPORT, PREDICT, PREPARE
from turbo_ray.errors import UserError

COMMANDS: list[Command] = [
    CONFIG,
    PREPARE,
    TUNE,
    TRAIN,
    EXPORT,
    PREDICT,
    SERVE,
    CHECK_CLUSTER,
    LOCAL_CLUSTER,
]


def build_parser() -> argparse.ArgumentParser:
    # no abbreviated flags: a renamed flag is an error, not a prefix of another
    parser = argparse.ArgumentParser(prog="turbo-ray", description=__doc__, allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        subparser = sub.add_parser(
            command.name, help=command.help, description=command.help, allow_abbrev=False
        )
        command.flags(subparser)
        subparser.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"turbo-ray: error: {err}", file=sys.stderr)
        return 2
