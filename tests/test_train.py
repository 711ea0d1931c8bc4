"""Training one config (`turbo-ray train`): real local Ray, real TorchTrainer, tiny preset; the
optimizer's parameter groups. (A two-worker run that fails and restarts: test_cluster_fault.py.)"""

import json

import pandas as pd
import pytest
from conftest import run_main
from matplotlib.image import imread
from mlflow.tracking import MlflowClient

from turbo_ray.config import load_config
from turbo_ray.config.classes import ClassMap
from turbo_ray.model import build_model
from turbo_ray.train import build_optimizer


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


@pytest.fixture(scope="module")
def fixed_job(shared_ray, tiny, tmp_path_factory):
    """`turbo-ray train` of one config for the baseline and Turbo on fold 1, over every IEMOCAP
    label (data.classes=all), seed 1, one epoch: (its folder, what it printed)."""
    out = tmp_path_factory.mktemp("fixed") / "ablation"
    job = ["train", "--modes", "baseline,turbo", "--fold", "1", "--output-dir", str(out), *tiny]
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
        meta = json.loads((out / fold["checkpoint"] / "meta.json").read_text())
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
    kept = [str(c.relative_to(out)) for c in out.glob("checkpoints/*/checkpoint_*") if c.is_dir()]
    assert sorted(kept) == sorted(fold["checkpoint"] for fold in results["folds"])
    assert all(
        sorted(f.name for f in (out / c).iterdir()) == ["meta.json", "model.pt"] for c in kept
    )
