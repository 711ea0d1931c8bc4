"""cluster.yaml: Ray's own offline validation plus the project's rules (head without CPU, GPU
workers, token auth, nothing public but SSH, the pinned Ray image)."""

import re
from pathlib import Path

import pytest
import yaml

from turbo_ray.cli import main
from turbo_ray.cluster import check_cluster_config

REPO = Path(__file__).parents[1]


def write(tmp_path, raw):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def shipped():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_shipped_cluster_yaml_passes(capsys):
    assert check_cluster_config(REPO / "cluster.yaml") == []
    assert main(["check-cluster", str(REPO / "cluster.yaml")]) == 0
    assert "ok: fit to `ray up`" in capsys.readouterr().out


def head(raw):
    return raw["available_node_types"][raw["head_node_type"]]


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda raw: head(raw)["resources"].update(CPU=8), "head node must offer no CPU"),
        (lambda raw: head(raw)["resources"].pop("train_driver"), "'train_driver' resource"),
        (
            lambda raw: raw["available_node_types"]["gpu_worker"]["resources"].pop("GPU"),
            "worker type 'gpu_worker' declares no GPU",
        ),
        (
            lambda raw: raw["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5),
            "Ray rejects the config.*0.5",
        ),  # Ray's own schema: integer resources
        (
            lambda raw: (
                raw["docker"]["run_options"].remove("-e RAY_AUTH_MODE=token"),
                raw.update(worker_start_ray_commands=["ray start --address=$RAY_HEAD_IP:6379"]),
            ),
            "worker_start_ray_commands: `ray start` without RAY_AUTH_MODE=token",
        ),
        (
            lambda raw: raw.update(
                head_start_ray_commands=[
                    "RAY_AUTH_MODE=token ray start --head --dashboard-host=0.0.0.0"
                ]
            ),
            "dashboard bound to 0.0.0.0",
        ),
        (
            lambda raw: raw["provider"].update(
                security_group={
                    "GroupName": "turbo",
                    "IpPermissions": [
                        {
                            "FromPort": 8265,
                            "ToPort": 8265,
                            "IpProtocol": "tcp",
                            "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
                        }
                    ],
                }
            ),
            "8265 \\(dashboard\\); only SSH \\(22\\) may be public",
        ),
        (
            lambda raw: raw["docker"].update(image="rayproject/ray-ml:2.9.0-gpu"),
            "should be 'rayproject/ray:",
        ),
        (lambda raw: raw.update(max_workers="many"), "Ray rejects the config"),
    ],
)
def test_each_broken_rule_is_named(tmp_path, shipped, break_it, message, capsys):
    break_it(shipped)
    path = write(tmp_path, shipped)
    problems = check_cluster_config(path)
    assert any(re.search(message, p) for p in problems), problems
    assert main(["check-cluster", str(path)]) == 1


def test_ssh_may_be_public(tmp_path, shipped):
    shipped["provider"]["security_group"] = {
        "GroupName": "turbo",
        "IpPermissions": [
            {
                "FromPort": 22,
                "ToPort": 22,
                "IpProtocol": "tcp",
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            }
        ],
    }
    assert check_cluster_config(write(tmp_path, shipped)) == []
