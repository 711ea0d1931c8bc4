"""What the end-to-end tests share: a small job's command line, the checks of its MLflow store."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient


def small_job(cache: Path, out: Path, *overrides: str) -> list[str]:
    """Arguments of a one-fold, two-epoch job on the small demo corpus (flags, then the config
    overrides and `overrides`: the command's own flags go before them)."""
    return [
        "--folds",
        "1",
        "--output-dir",
        str(out),
        f"data.cache_dir={cache}",
        "data.demo_utterances_per_speaker=12",
        "data.val_fraction=0.25",
        "data.max_seconds=1.0",
        "train.epochs=2",
        "model.head_hidden=64",
        *overrides,
    ]


def check_mlflow_store(out: Path, scratch: Path) -> None:
    """A finished job's MLflow store (`<out>/mlflow.db`) holds what its results.json and trials.csv
    say, each once: one FINISHED parent with the folds' mean test UA; a FINISHED run per trial
    with its full config and every epoch's validation score; a run per fold with its test scores,
    its selected trial and its confusion matrix. Nothing left RUNNING."""
    results = json.loads((out / "results.json").read_text())
    trials = pd.read_csv(out / "trials.csv", dtype={"trial": str})
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.status for r in runs} == {"FINISHED"}
    by_role = {role: [r for r in runs if r.data.tags["role"] == role] for role in ("trial", "fold")}
    (parent,) = [r for r in runs if r.data.tags["role"] == "experiment"]
    assert parent.data.metrics["mean_test_ua"] == pytest.approx(
        np.mean([f["ua"] for f in results["folds"]])
    )
    trial_runs = {r.data.tags["trial_id"]: r for r in by_role["trial"]}
    assert len(trial_runs) == len(by_role["trial"]) == len(trials)  # each trial logged once
    batch_size = str(results["config"]["data"]["batch_size"])
    for _, row in trials.iterrows():
        run = trial_runs[row.trial]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["fold"] == str(row.fold)
        for key in results["search"]["space"]:
            assert float(run.data.params[key]) == pytest.approx(row[key])
        assert run.data.params["data.batch_size"] == batch_size  # the full config
        history = client.get_metric_history(run.info.run_id, "val_ua")
        assert [m.step for m in history] == list(range(1, row.epochs + 1))
        assert max(m.value for m in history) == pytest.approx(row.best_val_ua)
    folds = {int(r.data.tags["fold"]): r for r in by_role["fold"]}
    assert sorted(folds) == sorted(f["test_session"] for f in results["folds"])
    for fold in results["folds"]:
        run = folds[fold["test_session"]]
        assert run.data.metrics["test_ua"] == pytest.approx(fold["ua"])
        assert run.data.tags["trial"] == fold["trial"]
        assert trial_runs[fold["trial"]].data.tags["selected_for_fold"] == str(fold["test_session"])
        confusion = client.download_artifacts(run.info.run_id, "confusion.json", str(scratch))
        assert json.loads(Path(confusion).read_text())["matrix"] == fold["confusion"]
