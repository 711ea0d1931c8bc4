"""Ray Train on the demo corpus: real local Ray, real TorchTrainer, tiny preset."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import ray.train
import torch
import torch.distributed as dist
from conftest import run_main
from matplotlib.image import imread
from mlflow.tracking import MlflowClient

from turbo_ray import train
from turbo_ray.checkpoints import load_model
from turbo_ray.config import load_config
from turbo_ray.data.classes import ClassMap
from turbo_ray.data.folds import fold_splits
from turbo_ray.data.pipeline import collate_for, split_dataset
from turbo_ray.inference import evaluate
from turbo_ray.model import build_model
from turbo_ray.runners import build_trainer, worker_context
from turbo_ray.train import build_optimizer, fit

FAST = [
    "data.max_seconds=2.0",
    "data.batch_size=8",
    "train.epochs=3",
    "train.num_workers=2",
    "train.num_to_keep=null",
    "model.head_hidden=64",
]


def fit_fold(cfg, corpus, name, **kwargs):
    splits = fold_splits(corpus.fold(cfg.data))
    return build_trainer(cfg, corpus.shards, splits, corpus.classes, name, **kwargs).fit()


def test_optimizer_groups_lrs_and_weight_decay_and_is_fused():
    cfg = load_config(
        None,
        [
            "train.lr=1e-3",
            "train.encoder_lr=1e-5",
            "train.weight_decay=0.05",
            "loss.learnable_temperature=true",
        ],
    )
    model = build_model(cfg, num_classes=4)
    optimizer = build_optimizer(model, cfg)
    groups = {
        (g["lr"], g["weight_decay"]): {id(p) for p in g["params"]} for g in optimizer.param_groups
    }
    assert len(groups) == 4
    fast, slow = groups[1e-3, 0.05] | groups[1e-3, 0.0], groups[1e-5, 0.05] | groups[1e-5, 0.0]
    assert slow == {
        id(p) for p in model.text_encoder.parameters()
    }  # MiniLM is pretrained, tiny audio is not
    assert {id(p) for p in model.audio_encoder.parameters() if p.requires_grad} <= fast
    assert len(fast) + len(slow) == sum(p.requires_grad for p in model.parameters())
    # decay on matrices only: biases, norms and the temperature are excluded (as in open_clip)
    no_decay = groups[1e-3, 0.0] | groups[1e-5, 0.0]
    assert {id(model.log_temperature), id(model.classifier[0].bias)} <= no_decay
    assert no_decay == {id(p) for p in model.parameters() if p.requires_grad and p.ndim < 2}
    assert optimizer.defaults["fused"]  # one kernel over all parameters: 7x faster steps on CPU


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


def fail_once_in_epoch(epoch: int, marker_dir: Path) -> None:
    """Make this worker process's `train_epoch` raise in epoch `epoch` (counted from the checkpoint
    it resumes from) on the last rank, once per test: `<marker_dir>/failed-once` records that it
    fired."""
    ctx, checkpoint = ray.train.get_context(), ray.train.get_checkpoint()
    done = 0
    if checkpoint:
        with checkpoint.as_directory() as d:
            done = json.loads((Path(d) / "meta.json").read_text())["epoch"]
    epochs, marker, real = (
        iter(range(done + 1, 10**6)),
        marker_dir / "failed-once",
        train.train_epoch,
    )

    def train_epoch(*args, **kwargs):
        if (
            next(epochs) == epoch
            and ctx.get_world_rank() == ctx.get_world_size() - 1
            and not marker.exists()
        ):
            marker.touch()
            raise RuntimeError(f"injected failure in epoch {epoch} (test hook)")
        return real(*args, **kwargs)

    train.train_epoch = (
        train_epoch  # this worker process only: Train starts new ones after a failure
    )


def fail_in_epoch_2_then_compare_replicas(loop_config):
    fail_once_in_epoch(2, Path(loop_config["config"]["train"]["storage_path"]))
    fit_and_compare_replicas(loop_config)


def epoch(metrics):
    return metrics["epoch"]


def metrics_of(metrics):
    """What an epoch computed (not when)."""
    return {k: v for k, v in metrics.items() if k.startswith(("train_", "val_", "best_", "lr"))}


def test_two_worker_run_survives_a_worker_failure_learns_and_restores(
    shared_ray, demo_corpus, tmp_path
):
    # one realistic run: a worker dies in epoch 2; Train restarts the group from the epoch-1
    # checkpoint, and the run ends exactly as an uninterrupted one (each epoch's rows fixed by
    # seed and epoch). Gradient accumulation over 3 batches, and each worker's epoch ends on a
    # partial window of 2
    cfg = load_config(
        None,
        FAST
        + [
            f"train.storage_path={tmp_path}",
            "train.max_failures=1",
            "train.grad_accum=3",
            "data.batch_size=7",
        ],
    )
    rows_per_worker = len(demo_corpus.fold(cfg.data).train) // 2
    assert math.ceil(rows_per_worker / 7) % 3 == 2
    marker = tmp_path / "failed-once"
    result = fit_fold(cfg, demo_corpus, "two-workers", loop=fail_in_epoch_2_then_compare_replicas)
    assert marker.exists(), "the injected failure did not fire"
    assert result.error is None
    assert (
        json.loads((tmp_path / "replicas.json").read_text()) == 0.0
    )  # every step all-reduced, the last too
    history = sorted((m for _, m in result.best_checkpoints), key=lambda m: m["epoch"])
    assert [m["epoch"] for m in history] == [1, 2, 3]  # no epoch repeated or skipped
    metas = [
        json.loads((Path(c.path) / "meta.json").read_text()) for c, _ in result.best_checkpoints
    ]
    assert sorted(m["epoch"] for m in metas) == [1, 2, 3]
    for m in history:
        assert {
            "train_ce",
            "train_in",
            "train_cross",
            "train_total",
            "val_wa",
            "val_ua",
            "val_f1",
        } <= set(m)
        assert m["val_n"] == len(demo_corpus.fold(cfg.data).val)  # rank 0 saw the whole val split
    assert history[-1]["train_total"] < history[0]["train_total"]
    # the same config and seed, uninterrupted: the same losses and scores every epoch, the same
    # weights at the end
    uninterrupted = fit_fold(cfg, demo_corpus, "uninterrupted")
    assert [metrics_of(m) for m in history] == [
        metrics_of(m) for m in sorted((m for _, m in uninterrupted.best_checkpoints), key=epoch)
    ]
    last = [torch.load(Path(run.checkpoint.path) / "model.pt") for run in (result, uninterrupted)]
    assert last[0].keys() == last[1].keys()
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[0])

    # the checkpoint restores exactly: re-evaluating it reproduces the reported validation metrics
    best_ckpt, best = max(result.best_checkpoints, key=lambda cm: cm[1]["val_ua"])
    model, meta = load_model(best_ckpt.path)
    assert meta["epoch"] == best["epoch"] and meta["classes"] == list(demo_corpus.classes)
    state = torch.load(
        Path(best_ckpt.path) / "train_state.pt", weights_only=True
    )  # no pickled objects
    assert state["epoch"] == best["epoch"] and "optimizer" in state and "scheduler" in state
    val = split_dataset(cfg, demo_corpus.shards, demo_corpus.fold(cfg.data).val.utterance_id)
    again = evaluate(
        model,
        val.iter_torch_batches(batch_size=8, collate_fn=collate_for(cfg)),
        len(demo_corpus.classes),
        torch.device("cpu"),
    )
    assert again["confusion"] == best["val_confusion"] and again["ua"] == best["val_ua"]

    # the same run name again resumes from its last checkpoint: nothing is retrained
    before = sorted(p.name for p in Path(result.path).glob("checkpoint_*"))
    again = fit_fold(cfg, demo_corpus, "two-workers", loop=fit_and_compare_replicas)
    assert again.error is None
    assert sorted(p.name for p in Path(again.path).glob("checkpoint_*")) == before


@pytest.fixture(scope="module")
def fixed_job(shared_ray, tiny, tmp_path_factory):
    """`turbo-ray train` of one config for the baseline and Turbo on fold 1, over every IEMOCAP
    label (data.classes=all), seed 1, one epoch: (its folder, what it printed)."""
    out = tmp_path_factory.mktemp("fixed") / "ablation"
    job = ["train", "--mode", "baseline,turbo", "--fold", "1", "--output-dir", str(out), *tiny]
    return out, run_main(*job, "data.classes=all", "train.seed=1", "train.epochs=1")


def test_a_fixed_config_ablation_prints_and_writes_the_paired_comparison(fixed_job):
    out, printed = fixed_job
    assert "Paired comparison with the baseline (loso, one fixed config for all modes" in printed
    results = json.loads((out / "results.json").read_text())
    ua = {(f["mode"], f["test_session"], f["seed"]): f["ua"] for f in results["folds"]}
    assert sorted(ua) == [("baseline", 1, 1), ("turbo", 1, 1)]
    difference = ua["turbo", 1, 1] - ua["baseline", 1, 1]
    table = pd.read_csv(out / "comparison.csv")
    (row,) = table[table.score == "ua"].itertuples(index=False)
    assert (row.mode, row.folds, row.pairs) == ("turbo", 1, 1)
    assert row.difference == pytest.approx(difference)
    assert results["comparison"] == json.loads(table.to_json(orient="records"))
    assert imread(out / "comparison.png").std() > 0  # drawn
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if r.data.tags["role"] == "experiment"]
    assert parent.data.metrics["difference_ua/turbo"] == pytest.approx(difference)


def test_a_fixed_job_scores_every_class_tracks_each_run_and_keeps_only_the_tested_weights(
    fixed_job,
):
    out, printed = fixed_job
    assert "no problems" in printed  # the corpus report, as `prepare` prints it
    results = json.loads((out / "results.json").read_text())
    # with data.classes=all the classifier has a logit per IEMOCAP label (11)
    assert results["classes"] == list(ClassMap.parse("all").names)
    for fold in results["folds"]:
        assert len(fold["confusion"]) == len(ClassMap.parse("all").names) == 11
        meta = json.loads((Path(fold["checkpoint"]) / "meta.json").read_text())
        assert (
            meta["config"]["train"]["seed"] == 1 and meta["config"]["loss"]["mode"] == fold["mode"]
        )
        assert not [k for k in meta["metrics"] if k.startswith("test")]  # never saw the test split
    # MLflow: the experiment's run and a run per mode and fold with its test scores
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    tracked = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.status for r in tracked} == {"FINISHED"}
    (parent,) = [r for r in tracked if r.data.tags["role"] == "experiment"]
    assert parent.data.tags["protocol"] == "loso"
    runs = {r.data.tags["mode"]: r for r in tracked if r.data.tags["role"] == "fold"}
    for fold in results["folds"]:
        assert runs[fold["mode"]].data.tags["seed"] == "1"
        assert runs[fold["mode"]].data.metrics["test_ua"] == pytest.approx(fold["ua"])
        assert parent.data.metrics[f"mean_test_ua/{fold['mode']}"] == pytest.approx(fold["ua"])
    # the finished job keeps only the weights of the checkpoints its table came from
    kept = [str(c) for c in out.glob("checkpoints/*/checkpoint_*") if c.is_dir()]
    assert sorted(kept) == sorted(fold["checkpoint"] for fold in results["folds"])
    assert all(sorted(f.name for f in Path(c).iterdir()) == ["meta.json", "model.pt"] for c in kept)
