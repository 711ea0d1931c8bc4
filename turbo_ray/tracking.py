"""Experiment tracking in MLflow, written when the training has ended: one parent run per
experiment, under it a run per Tune trial (its full config, every epoch's metrics, from Tune's
records in the job's storage) and a run per tested fold (and mode and seed: the checkpoint tested,
test scores, confusion matrix, checkpoint path). While a search runs, the dashboard, the progress
lines and TensorBoard (Tune's event files) show it.

    tracker = Tracker.open(cfg, paths, protocol, corpus_label)
    tracker.log_trials(grid, cfg)                          # a run per trial, from Tune's records
    tracker.log_folds(results, cfg, classes); tracker.finish(results, files, by)
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
from ray.tune import ResultGrid

from turbo_ray.config import Config, override
from turbo_ray.metrics import scores_of
from turbo_ray.paths import RunPaths
from turbo_ray.trials import (
    FOLD_TRIAL,
    SearchKey,
    stopped_early,
    trial_config,
    trial_id,
    trial_name,
)

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
        parent, _ = tracker.run(
            paths.out.name, {"role": "experiment", "output_dir": str(paths.out)}, parent=False
        )
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
        """The params the run lacks (a run created just before a crash has none yet)."""
        logged = self.client.get_run(run_id).data.params
        items = [Param(k, v) for k, v in params.items() if k not in logged]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per request
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Metrics at `step`; those of a whole run (step 0: a fold's or the experiment's scores)
        only where the run has none yet, so a restarted job logs each once (`log_trials` skips
        the epochs it logged)."""
        if step == 0:
            logged = self.client.get_run(run_id).data.metrics
            metrics = {k: v for k, v in metrics.items() if k not in logged}
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_folds(self, results: pd.DataFrame, cfg: Config, classes: list[str]) -> None:
        """A run per tested fold (and mode and seed): its config, validation and test scores, its
        confusion matrix and checkpoint; a selected trial's run is tagged with its fold."""
        metric = cfg.tune.metric
        for row in results.to_dict("records"):
            fold = str(row["test_session"])
            group = {"mode": row["mode"], "seed": str(row["seed"])}
            name = f"fold {fold} mode {row['mode']} seed {row['seed']}"
            run_id, created = self.run(name, {"role": "fold", "fold": fold} | group)
            client = self.client
            if not created and client.get_run(run_id).info.status == "FINISHED":
                continue  # logged whole before a restart
            for key in ("trial", "checkpoint"):
                if key in row:
                    client.set_tag(run_id, key, row[key])
            setting = {"loss.mode": row["mode"], "train.seed": row["seed"]}
            self.log_params(run_id, flat_config(override(cfg, row.get("params", {}) | setting)))
            scores = {f"test_{k}": row[k] for k in scores_of(row)}
            self.log_metrics(
                run_id, scores | {metric: row[metric], "best_epoch": row["best_epoch"]}
            )
            client.log_dict(
                run_id, {"classes": classes, "matrix": row["confusion"]}, "confusion.json"
            )
            client.log_text(run_id, f"{row['checkpoint']}\n", "checkpoint.txt")
            client.set_terminated(run_id)
            if "trial" in row:
                trial_run, _ = self.run(row["trial"], {"role": "trial", "trial_id": row["trial"]})
                client.set_tag(trial_run, "selected_for_fold", fold)

    def log_trials(self, grid: ResultGrid, cfg: Config) -> None:
        """A run per Tune trial, from Tune's own records of the search (so a resumed job, on any
        machine, logs every trial with its whole history into its own store): the trial's full
        config as params, its search (mode, seed, fold) as tags, each epoch's losses, scores and
        timings as metrics (step = epoch), whether ASHA stopped it."""
        for result in sorted(grid, key=lambda r: (SearchKey.of(r.config), r.config[FOLD_TRIAL])):
            search = {k: str(v) for k, v in SearchKey.of(result.config)._asdict().items()}
            run_id, _ = self.run(
                trial_name(result.config),
                {"role": "trial", "trial_id": trial_id(result)} | search,
            )
            client = self.client
            run = client.get_run(run_id)
            if run.info.status in ("FINISHED", "FAILED"):
                continue  # logged whole before a restart
            self.log_params(run_id, flat_config(trial_config(cfg, result.config)))
            logged = int(run.data.metrics.get("epoch", 0))
            history = result.metrics_dataframe
            epochs = (
                history.drop_duplicates("epoch", keep="last").sort_values("epoch")
                if history is not None and "epoch" in history
                else pd.DataFrame(columns=["epoch"])
            )
            for _, row in epochs[epochs.epoch > logged].iterrows():
                metrics = {
                    k: float(v)
                    for k, v in row.items()
                    if k.startswith(EPOCH_METRICS) and isinstance(v, (int, float)) and v == v
                }
                self.log_metrics(run_id, metrics | {"epoch": int(row.epoch)}, step=int(row.epoch))
            last = int(epochs.epoch.max()) if len(epochs) else 0
            stopped = stopped_early(last, cfg.train.epochs, bool(result.error))
            client.set_tag(run_id, "stopped_early", str(stopped).lower())
            client.set_terminated(run_id, "FAILED" if result.error else "FINISHED")

    def finish(
        self,
        results: pd.DataFrame,
        files: list[Path],
        by: list[str] | None,
        comparison: pd.DataFrame | None = None,
    ) -> None:
        """The parent run: the mean test scores (per group of `by`, e.g. `mean_test_ua/turbo`),
        each mode's paired comparison with the baseline (e.g. `difference_ua/turbo`, `p_ua/turbo`)
        and the experiment's output files."""
        groups = results.groupby(by, sort=False) if by else [((), results)]
        for key, group in groups:
            suffix = "".join(f"/{v}" for v in (key if isinstance(key, tuple) else (key,)))
            means = {f"mean_test_{k}{suffix}": group[k].mean() for k in scores_of(group)}
            self.log_metrics(self.parent, means)
        for row in (comparison if comparison is not None else pd.DataFrame()).to_dict("records"):
            stats = ("difference", "ci_low", "ci_high", "p")
            named = {f"{k}_{row['score']}/{row['mode']}": row[k] for k in stats}
            self.log_metrics(self.parent, {k: v for k, v in named.items() if v == v})  # not NaN
        for path in files:
            self.client.log_artifact(self.parent, str(path))
        self.client.set_terminated(self.parent)

    def ui_command(self) -> str:
        """The command that opens these runs in MLflow's UI (or the tracking server's address)."""
        if not self.uri.startswith("sqlite:"):
            return f"open {self.uri}"
        mlflow = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
        return f"{os.path.relpath(mlflow)} ui --backend-store-uri {self.uri}"
