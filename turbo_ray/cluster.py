"""Offline checks of a `ray up` cluster config (Ray's own schema validation plus this project's
rules), and the same cluster as a local rehearsal on Ray's fake multi-node provider.

problems = check_cluster_config("cluster.yaml")     # [] when the file is fit to launch
fake = local_cluster_config(yaml.safe_load(open("cluster.yaml")))   # for `turbo-ray local-cluster`
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import psutil
import ray
import yaml

from turbo_ray.runtime import DRIVER_RESOURCE

GCS_PORT, DASHBOARD_PORT = 6379, 8265  # Ray's defaults
PRIVATE_PORTS = {GCS_PORT: "GCS", DASHBOARD_PORT: "dashboard", 10001: "Ray client"}
# what a worker's GPUs become on a local rehearsal (fake nodes have no CUDA); jobs ask for it with
# `train.gpu_resource=local_gpu`
LOCAL_GPU = "local_gpu"
FAKE_HEAD = "ray.head.default"  # the head type name Ray's fake provider expects
NODE_OBJECT_STORE = 500 * 1024**2  # per fake node: they all share this machine's memory
RAY = str(Path(sys.executable).parent / "ray")  # the CLI of the Ray this project runs


def check_cluster_config(path: str | Path) -> list[str]:
    """Every problem found, as a sentence naming the node type or command; [] if none."""
    raw = yaml.safe_load(Path(path).read_text())
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config

        validate_config(prepare_config(copy.deepcopy(raw)))
    except (
        jsonschema.ValidationError,
        ValueError,
        KeyError,
        TypeError,
    ) as err:  # Ray's ways to reject
        return [f"Ray rejects the config: {type(err).__name__}: {err}"]
    return (
        _head_problems(raw)
        + _worker_problems(raw)
        + _auth_problems(raw)
        + _exposure_problems(raw)
        + _image_problems(raw)
    )


def _node_types(raw: dict) -> tuple[dict, dict]:
    types = raw.get("available_node_types", {})
    head = raw.get("head_node_type")
    return types.get(head, {}), {name: t for name, t in types.items() if name != head}


def _head_problems(raw: dict) -> list[str]:
    resources = _node_types(raw)[0].get("resources", {})
    problems = []
    if resources.get("CPU") != 0:
        problems.append(
            "head node must offer no CPU to trials (resources: {CPU: 0, ...}): it runs drivers only"
        )
    if not resources.get(DRIVER_RESOURCE):
        problems.append(
            f"head node must declare the {DRIVER_RESOURCE!r} resource that every Tune trial takes"
        )
    return problems


def _worker_problems(raw: dict) -> list[str]:
    problems = []
    workers = _node_types(raw)[1]
    if not workers:
        problems.append("no worker node type: trials need GPU workers")
    for name, spec in workers.items():
        resources = spec.get("resources", {})
        if not resources.get("GPU"):
            problems.append(f"worker type {name!r} declares no GPU in its resources")
    return problems


def _auth_problems(raw: dict) -> list[str]:
    """Token auth on every node: in the container's environment or before each `ray start`."""
    container_env = any(
        "RAY_AUTH_MODE=token" in opt for opt in raw.get("docker", {}).get("run_options", [])
    )
    problems = []
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in raw.get(key, []) if "ray start" in c]
        if not starts:
            problems.append(f"{key} has no `ray start`")
        elif not container_env and not all("RAY_AUTH_MODE=token" in c for c in starts):
            problems.append(
                f"{key}: `ray start` without RAY_AUTH_MODE=token: "
                "token auth must be on on every node"
            )
    return problems


def _exposure_problems(raw: dict) -> list[str]:
    """The dashboard stays on 127.0.0.1 and no rule opens anything but SSH to the world."""
    problems = []
    for command in raw.get("head_start_ray_commands", []):
        host = re.search(r"--dashboard-host[= ](\S+)", command)
        if host and host.group(1) not in ("127.0.0.1", "localhost"):
            problems.append(
                f"dashboard bound to {host.group(1)}: keep it on 127.0.0.1 and use `ray dashboard`"
            )
    group = raw.get("provider", {}).get("security_group", {})
    for rule in group.get("IpPermissions", []):
        public = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or any(
            r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", [])
        )
        ports = set(range(rule.get("FromPort", 0), rule.get("ToPort", 65535) + 1))
        if public and ports - {22}:
            named = [f"{p} ({PRIVATE_PORTS[p]})" for p in sorted(PRIVATE_PORTS) if p in ports]
            problems.append(
                f"security group opens ports {rule.get('FromPort')}-{rule.get('ToPort')} to the "
                f"internet{': ' + ', '.join(named) if named else ''}; only SSH (22) may be public"
            )
    return problems


def _image_problems(raw: dict) -> list[str]:
    image = raw.get("docker", {}).get("image", "")
    expected = f"rayproject/ray:{ray.__version__}-py311-gpu"
    return (
        []
        if image == expected
        else [f"docker image {image!r} should be {expected!r} (the Ray this project pins)"]
    )


def describe(raw: dict[str, Any]) -> str:
    """One line per node type: resources and instance type."""
    head = raw.get("head_node_type")
    return "\n".join(
        f"  {name}{' (head)' if name == head else ''}: {spec.get('resources')} "
        f"{spec.get('node_config', {}).get('InstanceType', '')}"
        for name, spec in raw.get("available_node_types", {}).items()
    )


def local_cluster_config(
    raw: dict, idle_timeout_minutes: float | None = None, port: int = GCS_PORT
) -> dict:
    """`raw` (a `ray up` config) for Ray's fake multi-node provider, which starts each node as local
    processes: the same node types and resources (the head's `CPU: 0` and `train_driver`), every
    worker type from 0 nodes, a worker's GPUs as the `LOCAL_GPU` resource, a small object store
    per node, the head's GCS at `port` of this machine. `idle_timeout_minutes` overrides the
    file's."""
    head = raw["head_node_type"]
    types = {}
    for name, spec in raw["available_node_types"].items():
        resources = dict(spec.get("resources", {}))
        if name == head:
            types[FAKE_HEAD] = {"resources": resources, "node_config": {}, "max_workers": 0}
            continue
        if "GPU" in resources:
            resources[LOCAL_GPU] = resources.pop("GPU")
        types[name] = {
            "resources": resources | {"object_store_memory": NODE_OBJECT_STORE},
            "node_config": {},
            "min_workers": 0,
            "max_workers": spec.get("max_workers", raw.get("max_workers", 1)),
        }
    timeout = (
        raw.get("idle_timeout_minutes", 5) if idle_timeout_minutes is None else idle_timeout_minutes
    )
    empty = ["initialization_commands", "setup_commands", "head_setup_commands"]
    empty += ["worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands"]
    return {
        "cluster_name": f"{raw['cluster_name']}-local",
        "max_workers": raw.get("max_workers", 1),
        "upscaling_speed": raw.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": timeout,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"{ray.util.get_node_ip_address()}:{port}",  # where nodes join
        },
        "auth": {},
        "docker": {},
        "available_node_types": types,
        "head_node_type": FAKE_HEAD,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    } | {key: [] for key in empty}


def token_path() -> Path:
    """This machine's Ray token: what Ray reads, and `ray get-auth-token --generate` writes."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray/auth_token")


def start_local_cluster(
    raw: dict, config: Path, idle_timeout_minutes: float | None, port: int, dashboard_port: int
) -> dict:
    """Write `local_cluster_config(raw)` to `config` and start its head here (its GCS at `port`,
    token auth, the dashboard on 127.0.0.1:`dashboard_port`, the nodes' environment from the
    file's `-e KEY=VALUE` run options); the autoscaler adds the workers. Returns the fake
    config."""
    fake = local_cluster_config(raw, idle_timeout_minutes, port)
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(fake, sort_keys=False))
    head = dict(fake["available_node_types"][FAKE_HEAD]["resources"])
    container_env = dict(
        option.split(maxsplit=1)[1].split("=", 1)
        for option in raw.get("docker", {}).get("run_options", [])
        if option.startswith("-e ")
    )
    env = os.environ | container_env | {"RAY_FAKE_CLUSTER": "1", "RAY_AUTH_MODE": "token"}
    env |= {"AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True, env=env)
    command = [
        RAY,
        "start",
        "--head",
        f"--autoscaling-config={config}",
        f"--num-cpus={head.pop('CPU', 0)}",
        f"--num-gpus={head.pop('GPU', 0)}",
        f"--resources={json.dumps(head)}",
        f"--port={port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        # the job agent on a free port: Ray's fixed default (52365) may be another Ray's here
        f"--dashboard-agent-listen-port={free_port()}",
        f"--object-store-memory={NODE_OBJECT_STORE}",
    ]
    started = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if started.returncode:
        raise RuntimeError(f"`ray start` failed:\n{started.stdout[-2000:]}{started.stderr[-2000:]}")
    return fake


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        return server.getsockname()[1]


def stop_local_cluster(config: Path) -> str:
    """Kill the processes of the local cluster started from `config` (found by its autoscaler's
    `--autoscaling-config`) and nothing else: another Ray of this machine keeps running. Returns
    one line: what was stopped, or that no local cluster runs."""
    flag = f"--autoscaling-config={config}"
    cmdlines = (p.info["cmdline"] or [] for p in psutil.process_iter(["cmdline"]))
    monitor = next((cmdline for cmdline in cmdlines if flag in cmdline), None)
    if monitor is None:
        return f"no local cluster is running (none started from {config})"
    args = dict(a.split("=", 1) for a in monitor if a.startswith("--") and "=" in a)
    session = Path(args["--logs-dir"]).parent
    nodes, procs = _cluster_processes(session, args["--gcs-address"])
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    deadline = time.time() + 10
    while _alive(procs) and time.time() < deadline:
        time.sleep(0.2)
    current = session.parent / "ray_current_cluster"  # `ray start`'s, read by address="auto"
    if current.is_file() and current.read_text().strip() == args["--gcs-address"]:
        current.unlink()
    stopped = f"head and {max(nodes - 1, 0)} worker node(s), {len(procs)} processes"
    return f"stopped the local cluster at {args['--gcs-address']}: {stopped}"


def _cluster_processes(session: Path, address: str) -> tuple[int, list[psutil.Process]]:
    """The number of raylets (nodes) and the processes of the Ray instance of `session` and GCS
    `address`: those naming the folder (GCS, dashboard, autoscaler, raylets: the fake nodes' too),
    its Ray Client server and all their children (workers, agents, job drivers)."""
    roots = [
        p
        for p in psutil.process_iter(["cmdline"])
        if f"{session}/" in (cmdline := " ".join(p.info["cmdline"] or []))
        or ("ray.util.client.server" in cmdline and f"--address={address}" in cmdline.split())
    ]
    found = set(roots)
    for root in roots:
        with contextlib.suppress(psutil.Error):
            found.update(root.children(recursive=True))
    found.discard(psutil.Process())
    return sum(Path(p.info["cmdline"][0]).name == "raylet" for p in roots), _alive(found)


def _alive(procs) -> list[psutil.Process]:
    """Those still running (a zombie, exited but not yet reaped, is not)."""
    alive = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive
