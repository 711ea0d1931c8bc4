"""Losing a node mid-run: a real multi-node Ray cluster on one machine
(ray.cluster_utils.Cluster)."""

import json
import os
import threading
import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from turbo_ray.config import load_config
from turbo_ray.loso import fold_datasets
from turbo_ray.runtime import init_ray
from turbo_ray.train import build_trainer


@pytest.fixture
def three_node_cluster(tmp_path_factory):
    """A head with no CPU (it only hosts the drivers) and three 1-CPU worker nodes; a lost node is
    declared dead after ~3 s of failed health checks (Ray's default is ~15 s)."""
    os.environ.setdefault("RAY_TMPDIR", str(tmp_path_factory.getbasetemp() / "ray"))
    ray.shutdown()  # another test's local Ray: this test joins its own cluster
    fast_health_checks = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": fast_health_checks}
    )
    for _ in range(3):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    init_ray(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_losing_a_worker_node_resumes_from_last_checkpoint(
    three_node_cluster, demo_corpus, tmp_path
):
    # half a CPU per worker: after losing a node, the two survivors still host both workers and the
    # data tasks
    cfg = load_config(
        None,
        [
            "data.max_seconds=2.0",
            "data.batch_size=8",
            "model.head_hidden=64",
            "train.epochs=2",
            "train.num_workers=2",
            "train.cpus_per_worker=0.5",
            "train.placement_strategy=SPREAD",
            "train.max_failures=2",
            "train.num_to_keep=null",
            f"train.storage_path={tmp_path}",
        ],
    )
    fold = demo_corpus.fold(cfg.data)
    trainer = build_trainer(
        cfg,
        fold_datasets(cfg, demo_corpus, fold, with_test=False),
        demo_corpus.classes,
        len(fold.train),
        "node-loss",
    )
    outcome = {}
    run = threading.Thread(target=lambda: outcome.setdefault("result", trainer.fit()))
    run.start()

    deadline = time.time() + 300
    while not list((tmp_path / "node-loss").glob("checkpoint_*")):  # epoch 1 is saved
        assert time.time() < deadline and run.is_alive(), "no checkpoint appeared"
        time.sleep(0.5)
    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    worker_nodes = {a.node_id for a in workers}
    assert len(worker_nodes) == 2  # SPREAD: one worker per node
    victim = next(n for n in three_node_cluster.list_all_nodes() if n.node_id in worker_nodes)
    three_node_cluster.remove_node(victim, allow_graceful=False)

    run.join(timeout=600)
    assert not run.is_alive(), "the run did not finish after losing a node"
    result = outcome["result"]
    assert result.error is None
    metas = [
        json.loads((Path(c.path) / "meta.json").read_text()) for c, _ in result.best_checkpoints
    ]
    assert sorted(m["epoch"] for m in metas) == [1, 2]  # resumed: no epoch repeated or skipped
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert victim.node_id not in alive
