"""MLflow tracking on its real SQLite store: runs found again after a restart, never created twice.
(The nested search's test reads a whole experiment's runs back.)"""

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from turbo_ray.config import Config, load_config
from turbo_ray.paths import RunPaths
from turbo_ray.tracking import Tracker, flat_config


def test_a_restarted_job_finds_its_runs_instead_of_creating_new_ones(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(None, ["train.lr=0.002"])
    paths = RunPaths.of(tmp_path, "runs")
    tracker = Tracker.open(cfg, paths, "nested-loso", "demo corpus")
    assert (
        tracker.uri == f"sqlite:///{tmp_path / 'mlflow.db'}" and (tmp_path / "mlflow.db").exists()
    )
    run_id, created = tracker.run("fold 1 trial 0", {"role": "trial", "trial_id": "abc"})
    assert created
    tracker.log_metrics(run_id, {"val_ua": 0.5}, step=1)

    again = Tracker.open(cfg, paths, "nested-loso", "demo corpus")  # the driver restarted
    assert again == tracker
    assert again.run("fold 1 trial 0", {"role": "trial", "trial_id": "abc"}) == (run_id, False)
    assert again.run("fold 1 trial 1", {"role": "trial", "trial_id": "def"})[1]

    client = MlflowClient(tracker.uri)
    runs = client.search_runs([tracker.experiment_id])
    assert len(runs) == 3  # the parent and two trials
    parent = client.get_run(tracker.parent)
    assert (
        parent.data.params["train.lr"] == "0.002" and parent.data.tags["protocol"] == "nested-loso"
    )
    child = client.get_run(run_id)
    assert child.data.tags["mlflow.parentRunId"] == tracker.parent
    assert [m.value for m in client.get_metric_history(run_id, "val_ua")] == [0.5]
    # artifacts stay in the run folder with the store, not in the working directory
    assert client.get_experiment(tracker.experiment_id).artifact_location.startswith(
        tmp_path.as_uri()
    )


def test_every_config_value_is_a_param_under_its_dotted_key():
    params = flat_config(Config())
    assert params["loss.temperature"] == "0.07" and params["model.modalities"] == "audio+text"
    assert len(params) == sum(len(section) for section in Config().to_dict().values())


def test_the_ui_command_opens_the_store_it_was_given(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/shared.db")
    tracker = Tracker.open(Config(), RunPaths.of(tmp_path / "run", "runs"), "nested-loso", "demo")
    assert tracker.ui_command().endswith(f"ui --backend-store-uri sqlite:///{tmp_path}/shared.db")
    assert not (tmp_path / "run" / "mlflow.db").exists()


def test_runs_cut_short_by_a_crash_get_what_they_lack_once(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(None, ["train.lr=0.002"])
    paths = RunPaths.of(tmp_path, "runs")
    # the driver dies between creating the parent run and logging its params
    real = Tracker.log_params
    monkeypatch.setattr(Tracker, "log_params", lambda *a: (_ for _ in ()).throw(SystemExit))
    with pytest.raises(SystemExit):
        Tracker.open(cfg, paths, "nested-loso", "demo corpus")
    monkeypatch.setattr(Tracker, "log_params", real)
    tracker = Tracker.open(cfg, paths, "nested-loso", "demo corpus")  # restarted
    client = MlflowClient(tracker.uri)
    assert client.get_run(tracker.parent).data.params["train.lr"] == "0.002"
    # a fold's run dies after its scores, before it ends; the restarted job logs them once
    row = {
        "test_session": 1, "mode": "turbo", "seed": 0, "best_epoch": 2, "val_ua": 0.6,
        "wa": 0.5, "ua": 0.55, "f1": 0.5, "confusion": [[1, 0], [1, 1]], "checkpoint": "c",
    }  # fmt: skip
    monkeypatch.setattr(MlflowClient, "log_dict", lambda *a: (_ for _ in ()).throw(SystemExit))
    with pytest.raises(SystemExit):
        tracker.log_folds(pd.DataFrame([row]), cfg, ["a", "b"])
    monkeypatch.undo()
    tracker.log_folds(pd.DataFrame([row]), cfg, ["a", "b"])
    (fold,) = client.search_runs([tracker.experiment_id], "tags.role = 'fold'")
    assert [m.value for m in client.get_metric_history(fold.info.run_id, "test_ua")] == [0.55]
    assert fold.info.status == "FINISHED"
