"""The subcommands of a `ray up` cluster.yaml: `check-cluster` validates it offline,
`local-cluster` rehearses it on this machine (Ray's fake multi-node provider)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from turbo_ray.cli.args import Command, config_from_args
from turbo_ray.errors import UsageError
from turbo_ray.paths import local_cluster_config


def cluster_file_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", default="cluster.yaml", help="(default: %(default)s)")


def cmd_check_cluster(args: argparse.Namespace) -> int:
    from turbo_ray.cluster import check_cluster_config, describe

    problems = check_cluster_config(args.path)
    print(f"{args.path}:\n{describe(yaml.safe_load(Path(args.path).read_text()))}")
    for problem in problems:
        print(f"  problem: {problem}")
    print("ok: fit to `ray up`" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


CHECK_CLUSTER = Command(
    "check-cluster",
    "validate a `ray up` cluster.yaml offline (Ray's schema and this project's rules)",
    cluster_file_flag,
    cmd_check_cluster,
)


def local_cluster_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down"])
    cluster_file_flag(parser)
    parser.add_argument(
        "--idle-timeout-minutes", type=float, help="remove idle workers sooner than the file says"
    )
    parser.add_argument("--port", type=int, help="up: the head's GCS port (default: Ray's)")
    parser.add_argument("--dashboard-port", type=int, help="up: the dashboard's (default: Ray's)")
    parser.add_argument(
        "--config", help="YAML config file: its data.cache_dir keeps the cluster's file"
    )
    parser.set_defaults(overrides=[])


def cmd_local_cluster(args: argparse.Namespace) -> int:
    from turbo_ray.cluster import (
        DASHBOARD_PORT,
        GCS_PORT,
        start_local_cluster,
        stop_local_cluster,
        token_path,
    )

    config = local_cluster_config(config_from_args(args).data)
    if args.action == "down":
        print(stop_local_cluster(config))
        return 0
    raw = yaml.safe_load(Path(args.path).read_text())
    ports = (args.port or GCS_PORT, args.dashboard_port or DASHBOARD_PORT)
    token, written = token_path(), not token_path().exists()
    try:
        fake = start_local_cluster(raw, config, args.idle_timeout_minutes, *ports)
    except RuntimeError as err:
        raise UsageError(str(err)) from err
    print(cluster_up(args.path, config, fake, token, written, f"http://127.0.0.1:{ports[1]}"))
    return 0


LOCAL_CLUSTER = Command(
    "local-cluster",
    "rehearse a `ray up` cluster on this machine as local processes: the same node types, "
    "autoscaled from 0, token auth, the dashboard on 127.0.0.1",
    local_cluster_flags,
    cmd_local_cluster,
)


def cluster_up(
    path: str, config: Path, fake: dict, token: Path, written: bool, dashboard: str
) -> str:
    """What `local-cluster up` started, and how to submit the main job to it and stop it."""
    from turbo_ray.cluster import FAKE_HEAD, LOCAL_GPU

    lines = [f"local cluster up from {path} ({config}):"]
    for name, spec in fake["available_node_types"].items():
        if name == FAKE_HEAD:
            lines.append(f"  head: {spec['resources']} (drivers only)")
        else:
            lines.append(
                f"  {name}: 0-{spec['max_workers']} nodes of {spec['resources']}, added on demand"
            )
    if written:
        lines.append(
            f"wrote a Ray token to {token}: from now on every `ray start --head` on this machine\n"
            "turns token auth on, and jobs that join a Ray send it (RAY_AUTH_MODE=disabled: off)"
        )
    lines.append(
        f"  idle workers removed after {fake['idle_timeout_minutes']} min; "
        f"token auth on (the token: {token}); dashboard {dashboard}\n"
        "Submit the main job as on the real cluster, asking for the stand-in GPU resource (jobs\n"
        "start in this folder; no --working-dir: the fake nodes share this disk):\n"
        f"  RAY_AUTH_MODE=token ray job submit --address {dashboard} -- \\\n"
        f"    {sys.executable} experiments/tune_iemocap.py --address auto --use-gpu "
        f"train.gpu_resource={LOCAL_GPU}\n"
        "Stop it (its processes only, not another Ray of this machine): "
        "turbo-ray local-cluster down"
    )
    return "\n".join(lines)
