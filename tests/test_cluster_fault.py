"""Losing a node mid-run, with either runner: a real multi-node Ray cluster on one machine
(ray.cluster_utils.Cluster), shared by the module's tests (each kills one of its nodes)."""

import json
import os
import threading
import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from turbo_ray.cli import main
from turbo_ray.config import load_config
from turbo_ray.data.folds import fold_splits
from turbo_ray.runners import build_trainer
from turbo_ray.runtime import DRIVER_RESOURCE, init_ray


@pytest.fixture(scope="module")
def cluster(private_ray, ray_tmp):
    """A head with no CPU (it only hosts the drivers) and four 2-CPU worker nodes; a lost node is
    declared dead after ~3 s of failed health checks (Ray's default is ~15 s)."""
    os.environ["RAY_TMPDIR"] = str(ray_tmp("cluster"))
    fast_health_checks = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "resources": {DRIVER_RESOURCE: 64},
            "_system_config": fast_health_checks,
        },
    )
    for _ in range(4):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    init_ray(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_losing_a_worker_node_resumes_from_last_checkpoint(cluster, demo_corpus, tmp_path):
    cfg = load_config(
        None,
        [
            "data.max_seconds=2.0",
            "data.batch_size=8",
            "model.head_hidden=64",
            "train.epochs=4",  # the node goes after epoch 2, before the last
            "train.num_workers=2",
            "train.cpus_per_worker=0.5",
            "train.placement_strategy=SPREAD",
            "train.max_failures=2",
            "train.num_to_keep=null",
            f"train.storage_path={tmp_path}",
        ],
    )
    splits = fold_splits(demo_corpus.fold(cfg.data))
    trainer = build_trainer(cfg, demo_corpus.shards, splits, demo_corpus.classes, "node-loss")
    outcome = {}
    run = threading.Thread(target=lambda: outcome.setdefault("result", trainer.fit()))
    run.start()

    deadline = time.time() + 300
    # epochs 1 and 2 are saved: by then Train has registered epoch 1's (a checkpoint on disk that
    # its controller has not yet taken in is not resumed from)
    while len(list((tmp_path / "node-loss").glob("checkpoint_*"))) < 2:
        assert time.time() < deadline and run.is_alive(), "no checkpoint appeared"
        time.sleep(0.5)
    alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    workers = list_actors(address=cluster.address, filters=alive)
    worker_nodes = {a.node_id for a in workers}
    assert len(worker_nodes) == 2  # SPREAD: one worker per node
    victim = next(n for n in cluster.list_all_nodes() if n.node_id in worker_nodes)
    cluster.remove_node(victim, allow_graceful=False)

    run.join(timeout=600)
    assert not run.is_alive(), "the run did not finish after losing a node"
    result = outcome["result"]
    assert result.error is None
    metas = [
        json.loads((Path(c.path) / "meta.json").read_text()) for c, _ in result.best_checkpoints
    ]
    assert sorted(m["epoch"] for m in metas) == list(range(1, 5))  # none repeated or skipped
    started = {m["epoch"]: m["metrics"]["at_worker_start"] for m in metas}
    assert started[4] > started[1]  # the last epochs came from workers Train started again
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert victim.node_id not in alive


def test_losing_a_one_worker_trials_node_restarts_it_elsewhere_from_its_checkpoint(
    cluster, tiny, tmp_path
):
    out = tmp_path / "job"
    job = ["tune", "--num-samples", "1", "--folds", "1", "--output-dir", str(out), *tiny]
    job += ["train.epochs=3", "train.max_failures=1"]
    outcome = {}
    run = threading.Thread(target=lambda: outcome.setdefault("code", main(job)))
    run.start()
    deadline = time.time() + 300
    while not (recorded := list((out / "search").glob("trial-*/result.json"))) or not (
        recorded[0].read_text().strip()
    ):  # Tune recorded epoch 1 (and its checkpoint)
        assert time.time() < deadline and run.is_alive(), "no epoch was recorded"
        time.sleep(0.2)
    # a function trainable's actor: "ImplicitFunc", or its qualified name once a Tune job has run
    # in this process before ("wrap_function.<locals>.ImplicitFunc")
    alive = list_actors(address=cluster.address, filters=[("state", "=", "ALIVE")])
    (trial,) = [a for a in alive if a["class_name"].endswith("ImplicitFunc")]
    victim = next(n for n in cluster.list_all_nodes() if n.node_id == trial.node_id)
    cluster.remove_node(victim, allow_graceful=False)

    run.join(timeout=300)
    assert not run.is_alive() and outcome["code"] == 0
    history = [json.loads(line) for line in recorded[0].read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3]  # resumed: no epoch repeated or skipped
    assert history[0]["pid"] == trial.pid != history[1]["pid"]  # epochs 2, 3: another process
    assert json.loads((out / "results.json").read_text())["folds"][0]["test_session"] == 1
