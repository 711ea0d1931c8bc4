"""Experiment tracking in MLflow: one parent run per experiment, under it a run per Tune trial (its
full config, every epoch's metrics) and a run per outer fold (the checkpoint its search selected:
test scores, confusion matrix, checkpoint path).

    tracker = Tracker.open(cfg, paths, protocol, corpus_label)
    callbacks = [TrialRuns(tracker, cfg)]                  # Tune callback: a run per trial
    tracker.log_folds(results, cfg, classes); tracker.finish(results, files)
    print(tracker.ui_command())

The store is `tune.tracking_uri`, else $MLFLOW_TRACKING_URI, else a SQLite file in the run folder
(nothing to start). Runs are found again by their tags before one is created, so a resumed job
continues its runs and never logs a trial, a fold or an epoch twice.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from turbo_ray.config import Config, override
from turbo_ray.paths import RunPaths

EXPERIMENT = "turbo_ray"  # the MLflow experiment, unless $MLFLOW_EXPERIMENT_NAME names another
# the per-epoch result keys logged as metrics (Tune's bookkeeping and wall-clock stamps are not)
EPOCH_METRICS = ("train_", "val_", "best_", "time_", "lr")
PARENT = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a run under its parent


def flat_config(cfg: Config) -> dict[str, str]:
    """Every config value under its dotted key (MLflow params are strings)."""
    return {f"{s}.{k}": str(v) for s, section in cfg.to_dict().items() for k, v in section.items()}


@dataclass(frozen=True)
class Tracker:
    """Where an experiment's runs go: the store, the MLflow experiment and the parent run."""

    uri: str
    experiment_id: str
    parent: str  # run id of the experiment's parent run

    @classmethod
    def open(cls, cfg: Config, paths: RunPaths, protocol: str, corpus: str) -> Tracker:
        """The experiment's tracker; its parent run is created, or found again after a restart."""
        uri = cfg.tune.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        local = uri is None
        uri = uri or paths.mlflow_store
        client = MlflowClient(uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
        found = client.get_experiment_by_name(name)
        experiment_id = (
            found.experiment_id
            if found
            else client.create_experiment(
                name, artifact_location=paths.mlflow_artifacts if local else None
            )
        )
        tracker = cls(uri, experiment_id, parent="")
        parent, created = tracker.run(
            paths.out.name, {"role": "experiment", "output_dir": str(paths.out)}, parent=False
        )
        if created:
            client.set_tag(parent, "protocol", protocol)
            client.set_tag(parent, "corpus", corpus)
            tracker.log_params(parent, flat_config(cfg))
        return cls(uri, experiment_id, parent)

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def run(self, name: str, keys: dict[str, str], parent: bool = True) -> tuple[str, bool]:
        """The run tagged with `keys` (under the parent run), created if there is none yet;
        returns its id and whether it was created."""
        keys = keys | ({"parent_run": self.parent} if parent else {})
        query = " and ".join(f"tags.{k} = '{v}'" for k, v in keys.items())
        found = self.client.search_runs([self.experiment_id], query, max_results=1)
        if found:
            return found[0].info.run_id, False
        tags = keys | ({PARENT: self.parent} if parent else {})
        return self.client.create_run(
            self.experiment_id, tags=tags, run_name=name
        ).info.run_id, True

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per request
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_folds(self, results: pd.DataFrame, cfg: Config, classes: list[str]) -> None:
        """A run per outer fold: its selected config, validation and test scores, its confusion
        matrix and checkpoint; the selected trial's run is tagged with the fold it was chosen
        for."""
        metric = cfg.tune.metric
        for row in results.itertuples(index=False):
            fold = str(row.test_session)
            run_id, created = self.run(f"fold {fold}", {"role": "fold", "fold": fold})
            client = self.client
            if not created and client.get_run(run_id).info.status == "FINISHED":
                continue  # logged whole before a restart
            for key, value in {"trial": row.trial, "checkpoint": row.checkpoint}.items():
                client.set_tag(run_id, key, value)
            self.log_params(run_id, flat_config(override(cfg, row.params)))
            scores = {f"test_{k}": getattr(row, k) for k in ("wa", "ua", "f1")}
            self.log_metrics(
                run_id, scores | {metric: getattr(row, metric), "best_epoch": row.best_epoch}
            )
            client.log_dict(run_id, {"classes": classes, "matrix": row.confusion}, "confusion.json")
            client.log_text(run_id, f"{row.checkpoint}\n", "checkpoint.txt")
            client.set_terminated(run_id)
            trial_run, _ = self.run(row.trial, {"role": "trial", "trial_id": row.trial})
            client.set_tag(trial_run, "selected_for_fold", fold)

    def finish(self, results: pd.DataFrame, files: list[Path]) -> None:
        """The parent run: the folds' mean test scores and the experiment's output files."""
        self.log_metrics(self.parent, {f"mean_test_{k}": results[k].mean() for k in ("wa", "ua")})
        for path in files:
            self.client.log_artifact(self.parent, str(path))
        self.client.set_terminated(self.parent)

    def ui_command(self) -> str:
        """The command that opens these runs in MLflow's UI (or the tracking server's address)."""
        if not self.uri.startswith("sqlite:"):
            return f"open {self.uri}"
        mlflow = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
        return f"{os.path.relpath(mlflow)} ui --backend-store-uri {self.uri}"


class TrialRuns(Callback):
    """A run per Tune trial under the experiment's parent: the trial's full config as params, its
    fold as a tag, each epoch's losses, scores and timings as metrics (step = epoch)."""

    def __init__(self, tracker: Tracker, cfg: Config):
        self.tracker, self.base = tracker, cfg.to_dict()
        self.runs: dict[str, tuple[str, int]] = {}  # trial id → (run id, last epoch logged)

    def _run(self, trial) -> tuple[str, int]:
        if trial.trial_id not in self.runs:
            from turbo_ray.tune import FOLD, RANK, searched

            run_id, created = self.tracker.run(
                f"fold {trial.config[FOLD]} trial {trial.config[RANK]}",
                {"role": "trial", "trial_id": trial.trial_id, "fold": str(trial.config[FOLD])},
            )
            if created:
                config = override(Config.from_dict(self.base), searched(trial.config))
                self.tracker.log_params(run_id, flat_config(config))
            logged = self.tracker.client.get_run(run_id).data.metrics.get("epoch", 0)
            self.runs[trial.trial_id] = (run_id, int(logged))
        return self.runs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id, last = self._run(trial)
        epoch = result.get("epoch", 0)
        if epoch <= last:  # an epoch logged before a restart, reported again
            return
        metrics = {
            k: float(v)
            for k, v in result.items()
            if k.startswith(EPOCH_METRICS) and isinstance(v, (int, float))
        }
        self.tracker.log_metrics(run_id, metrics | {"epoch": epoch}, step=epoch)
        self.runs[trial.trial_id] = (run_id, epoch)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id, last = self._run(trial)
        stopped = last < self.base["train"]["epochs"]  # by ASHA
        self.tracker.client.set_tag(run_id, "stopped_early", str(stopped).lower())
        self.tracker.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.tracker.client.set_terminated(self._run(trial)[0], "FAILED")
