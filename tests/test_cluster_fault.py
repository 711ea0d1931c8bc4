"""Losing a node mid-run, with either runner: a real multi-node Ray cluster on one machine
(ray.cluster_utils.Cluster), shared by the module's tests (each kills one of its nodes). A
restarted run ends as an uninterrupted one would."""

import json
import math
import os
import threading
import time
from pathlib import Path

import pytest
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from turbo_ray.checkpoints import load_model
from turbo_ray.cli import main
from turbo_ray.config import load_config
from turbo_ray.data.folds import fold_splits
from turbo_ray.data.pipeline import collate_for, split_dataset
from turbo_ray.inference import evaluate
from turbo_ray.runners import build_trainer, worker_context
from turbo_ray.runtime import DRIVER_RESOURCE, init_ray
from turbo_ray.train import fit


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


def fit_and_compare_replicas(loop_config):
    """The production worker loop, then: how far apart are the replicas' parameters? Rank 0 writes
    the largest difference to `<train.storage_path>/replicas.json` (Train's result keeps
    checkpointed reports only)."""
    model = fit(loop_config, worker_context())
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    copies = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(copies, flat)
    if ray.train.get_context().get_world_rank() == 0:
        diff = max((c - flat).abs().max().item() for c in copies)
        (Path(loop_config["config"]["train"]["storage_path"]) / "replicas.json").write_text(
            json.dumps(diff)
        )


def computed(metrics: dict) -> dict:
    """What an epoch computed (not when, nor on which workers)."""
    return {k: v for k, v in metrics.items() if k.startswith(("train_", "val_", "best_", "lr"))}


def epochs(run) -> list[dict]:
    """A Train run's reported metrics, epoch by epoch (every checkpoint kept)."""
    return sorted((m for _, m in run.best_checkpoints), key=lambda m: m["epoch"])


def test_a_two_worker_run_that_loses_a_node_ends_as_an_uninterrupted_one_and_restores(
    cluster, demo_corpus, tmp_path
):
    # one realistic run: after epoch 2 a node of one of its two workers dies; Train restarts the
    # group elsewhere from the epoch-2 checkpoint, and the run ends exactly as an uninterrupted
    # one (each epoch's rows fixed by seed and epoch). Gradient accumulation over 3 batches, and
    # each worker's epoch ends on a partial window of 2
    cfg = load_config(
        None,
        [
            "data.max_seconds=2.0",
            "data.batch_size=7",
            "model.head_hidden=64",
            "train.grad_accum=3",
            "train.epochs=4",  # the node goes after epoch 2, before the last
            "train.num_workers=2",
            "train.cpus_per_worker=0.5",
            "train.placement_strategy=SPREAD",
            "train.max_failures=2",
            "train.num_to_keep=null",
            f"train.storage_path={tmp_path}",
        ],
    )
    fold = demo_corpus.fold(cfg.data)
    assert math.ceil(len(fold.train) // 2 / 7) % 3 == 2
    splits = fold_splits(fold)

    def trainer(name, **loop):
        return build_trainer(cfg, demo_corpus.shards, splits, demo_corpus.classes, name, **loop)

    outcome = {}
    run = threading.Thread(
        target=lambda: outcome.setdefault(
            "result", trainer("node-loss", loop=fit_and_compare_replicas).fit()
        )
    )
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
    assert victim.node_id not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    history = epochs(result)
    assert [m["epoch"] for m in history] == [1, 2, 3, 4]  # no epoch repeated or skipped
    metas = [
        json.loads((Path(c.path) / "meta.json").read_text()) for c, _ in result.best_checkpoints
    ]
    started = {m["epoch"]: m["metrics"]["at_worker_start"] for m in metas}
    assert started[4] > started[1]  # the last epochs came from workers Train started again
    # every step all-reduced, the last too
    assert json.loads((tmp_path / "replicas.json").read_text()) == 0.0
    for m in history:
        assert {"train_ce", "train_in", "train_cross", "train_total"} <= set(m)
        assert {"val_wa", "val_ua", "val_f1"} <= set(m)
        assert m["val_n"] == len(fold.val)  # rank 0 saw the whole validation split
    assert history[-1]["train_total"] < history[0]["train_total"]  # it learns

    # the same config and seed, uninterrupted: the same losses and scores every epoch, the same
    # weights at the end
    uninterrupted = trainer("uninterrupted").fit()
    assert [computed(m) for m in history] == [computed(m) for m in epochs(uninterrupted)]
    last = [torch.load(Path(r.checkpoint.path) / "model.pt") for r in (result, uninterrupted)]
    assert last[0].keys() == last[1].keys()
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[0])

    # the checkpoint restores exactly: re-evaluating it reproduces the reported validation metrics
    best_ckpt, best = max(result.best_checkpoints, key=lambda cm: cm[1]["val_ua"])
    model, meta = load_model(best_ckpt.path)
    assert meta["epoch"] == best["epoch"] and meta["classes"] == list(demo_corpus.classes)
    # no pickled objects
    state = torch.load(Path(best_ckpt.path) / "train_state.pt", weights_only=True)
    assert state["epoch"] == best["epoch"] and "optimizer" in state and "scheduler" in state
    val = split_dataset(cfg, demo_corpus.shards, fold.val.utterance_id)
    again = evaluate(
        model,
        val.iter_torch_batches(batch_size=8, collate_fn=collate_for(cfg)),
        len(demo_corpus.classes),
        torch.device("cpu"),
    )
    assert again["confusion"] == best["val_confusion"] and again["ua"] == best["val_ua"]

    # the same run name again resumes from its last checkpoint (a killed job's multi-worker
    # trial does): nothing is retrained
    before = sorted(p.name for p in Path(result.path).glob("checkpoint_*"))
    resumed = trainer("node-loss").fit()
    assert resumed.error is None
    assert sorted(p.name for p in Path(resumed.path).glob("checkpoint_*")) == before


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
