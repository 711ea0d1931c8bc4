"""Offline checks of a `ray up` cluster config: Ray's own schema validation plus this
project's rules.

problems = check_cluster_config("cluster.yaml")     # [] when the file is fit to launch
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import ray
import yaml

from turbo_ray.runtime import DRIVER_RESOURCE

PRIVATE_PORTS = {6379: "GCS", 8265: "dashboard", 10001: "Ray client"}


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
