"""Starting or joining Ray the way every job here needs it."""

from __future__ import annotations

import os
import socket

import ray
import ray.data

from turbo_ray.data.pipeline import configure_ray_data
from turbo_ray.errors import ClusterError

# a trial that drives a TorchTrainer takes a sliver of this, no CPU
DRIVER_RESOURCE = "train_driver"
# Ray kills idle worker processes beyond one per CPU within a second, so every Ray Data execution
# (each evaluation, each epoch after one) cold-started its processes (Python, torch, tokenizer).
# Keeping a few per CPU warm costs memory only while they idle (BENCHMARKS.md has the timings).
WARM_WORKERS_PER_CPU = 4


def init_ray(
    address: str | None = None, num_cpus: int | None = None, object_store_mb: int = 1024
) -> str | None:
    """Join the cluster at `address` ("auto", "ray://…") or start a local one with the dashboard on
    127.0.0.1 and the trial-driver resource. Returns the dashboard URL, if any. A process already
    connected to Ray (a notebook, a test) keeps its connection. Workers' output stays in Ray's
    session logs (`log_to_driver=False`): the terminal shows the job's own progress."""
    if ray.is_initialized():
        configure_ray_data()
        return None
    address = address or running_ray()
    if address:
        send_token_if_any()
        context = ray.init(address=address, log_to_driver=False)
        place_ray_data_actors()
    else:
        # Train runs and their workers on the dashboard's HTTP API (/api/train/v2/runs)
        os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
        # two logical CPUs per core: a training process takes a whole CPU and the Ray Data tasks
        # that feed it (fractions of one, mostly waiting on their consumer) reserve CPU beside
        # it; and one more that no trial reserves, for the whole CPU that Ray Data's Parquet
        # sampling asks whenever a trial builds its datasets. Fewer, and a 2-core laptop runs one
        # trial at a time, or hangs
        num_cpus = num_cpus or 2 * os.cpu_count() + 1
        # this Ray's own address, told to its processes: Ray's code that looks for "the" local
        # cluster (Train's placement-group cleaner) must not find another job's Ray beside it
        port = free_port()
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # read as Ray starts its GCS, then dropped
        try:
            context = ray.init(
                runtime_env={
                    "env_vars": {"RAY_ADDRESS": f"{ray.util.get_node_ip_address()}:{port}"}
                },
                num_cpus=num_cpus,
                resources={DRIVER_RESOURCE: 64},
                object_store_memory=object_store_mb * 1024**2,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                log_to_driver=False,
                _system_config={"num_workers_soft_limit": WARM_WORKERS_PER_CPU * num_cpus},
            )
        finally:  # not for this process's children (a `ray start` of theirs)
            del os.environ["RAY_GCS_SERVER_PORT"]
    configure_ray_data()
    return f"http://{context.dashboard_url}" if context.dashboard_url else None


def send_token_if_any() -> None:
    """A `ray start --head` on a machine that has a Ray token (~/.ray/auth_token, which any local
    Ray writes, or $RAY_AUTH_TOKEN_PATH) turns token auth on by itself, but a process joining it
    sends no token unless RAY_AUTH_MODE=token: so a joining job sends the token whenever there is
    one (a Ray without token auth ignores it); a RAY_AUTH_MODE the user set is kept."""
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def running_ray() -> str | None:
    """The Ray a job without `--address` joins: $RAY_ADDRESS, else the one `ray start` last
    started on this machine, if it still runs (Ray's own rule, minus a stale address). None: the
    job starts its own, beside any other job's."""
    from ray._private import services

    started = services.find_bootstrap_address(None)
    alive = started in services.find_gcs_addresses()
    return os.environ.get("RAY_ADDRESS") or (started if alive else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def place_ray_data_actors() -> None:
    """Ray Data keeps detached bookkeeping actors (its stats, its autoscaling coordinator) on the
    node of the first process that runs a pipeline, for as long as the cluster lives. If that were
    a trial on an autoscaled GPU node, the node would never be idle again and never scaled down:
    run a one-row pipeline here first, on the driver's node (no CPU asked, so a CPU-less head
    takes it)."""
    ray.data.from_items([{"row": 0}]).map_batches(lambda batch: batch, num_cpus=0).materialize()


def require_driver_resource() -> None:
    """Tune trials wait forever for a resource no node has: fail now, saying how to declare it."""
    if ray.cluster_resources().get(DRIVER_RESOURCE, 0) <= 0:
        raise ClusterError(
            f"this Ray cluster has no {DRIVER_RESOURCE!r} resource, which a trial that drives "
            f"a multi-worker TorchTrainer needs; declare it on the head node: "
            f"`resources: {{{DRIVER_RESOURCE}: 64}}` in cluster.yaml, or `ray start --head "
            f"--resources '{{\"{DRIVER_RESOURCE}\": 64}}'`"
        )
