"""What the terminal shows while a job runs: our own progress lines, Ray's logs in a file.

log = quiet_ray_logs(out_dir / "ray.log")     # Ray's driver-side loggers write there from now on
callbacks = [SearchProgress(total_trials)]    # a line per trial start and per epoch, a trial bar
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ray.tune import Callback
from tqdm import tqdm

RAY_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.data", "optuna", "mlflow", "alembic")


def quiet_ray_logs(log_file: Path) -> Path:
    """Send Ray's (and Optuna's, MLflow's) driver-side log records to `log_file`, not to the
    terminal."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, delay=True)  # created by the first record
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]:
            if not isinstance(old, logging.FileHandler):
                logger.removeHandler(old)
        logger.addHandler(handler)
        logger.propagate = False
    return log_file


def short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class SearchProgress(Callback):
    """A line when a trial starts (its fold and parameters), a line per epoch (validation score, its
    best so far, training loss, time), and a bar over the search's trials."""

    def __init__(self, total_trials: int, metric: str, epochs: int, searched: list[str]):
        self.total, self.metric, self.epochs, self.searched = total_trials, metric, epochs, searched
        self.started: dict[str, float] = {}
        self.bar = None

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment; a bar is not
        return self.__dict__ | {"bar": None}

    def setup(self, **info):
        self.bar = tqdm(total=self.total, desc="trials", unit="trial", leave=False, disable=None)

    def _name(self, trial) -> str:
        return f"fold {trial.config['fold']} trial {trial.config['fold_trial']}"

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.perf_counter()
        params = "  ".join(f"{k.split('.')[-1]}={short(trial.config[k])}" for k in self.searched)
        tqdm.write(f"{self._name(trial)}  started   {params}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.metric not in result:
            return
        seconds = time.perf_counter() - self.started.get(trial.trial_id, time.perf_counter())
        score, best = 100 * result[self.metric], 100 * result[f"best_{self.metric}"]
        tqdm.write(
            f"{self._name(trial)}  epoch {result['epoch']}/{self.epochs}  "
            f"val {self.metric[4:].upper()} {score:5.1f}  (best {best:5.1f})  "
            f"loss {result.get('train_total', float('nan')):.3f}  {seconds:4.0f} s"
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        stopped = last.get("epoch", self.epochs) < self.epochs
        tqdm.write(f"{self._name(trial)}  {'stopped by ASHA' if stopped else 'done'}")
        if self.bar is not None:
            self.bar.update(1)

    def on_trial_error(self, iteration, trials, trial, **info):
        tqdm.write(f"{self._name(trial)}  failed: see {trial.path}")
        if self.bar is not None:
            self.bar.update(1)

    def on_experiment_end(self, trials, **info):
        if self.bar is not None:
            self.bar.close()
