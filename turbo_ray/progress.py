"""What the terminal shows while a job runs: our own progress lines, Ray's logs in a file.

with ray_logs_in(out_dir / "ray.log"):        # Ray's driver-side loggers write there meanwhile
    callbacks = [SearchProgress(total_trials, metric, epochs)]  # lines per trial, a bar
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ray.tune import Callback
from tqdm import tqdm

from turbo_ray.formatting import short
from turbo_ray.trials import searched, stopped_early, trial_name

RAY_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.data", "optuna", "mlflow", "alembic")


@contextmanager
def ray_logs_in(log_file: Path) -> Iterator[Path]:
    """Within: Ray's (and Optuna's, MLflow's) driver-side log records go to `log_file`, not to the
    terminal. After: those loggers are as they were (a notebook's next job logs to its own file)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, delay=True)  # created by the first record
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = {}
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.propagate)
        kept = [
            h
            for h in logger.handlers
            if isinstance(h, logging.FileHandler) or not isinstance(h, logging.StreamHandler)
        ]
        logger.handlers = [*kept, handler]
        logger.propagate = False
    try:
        yield log_file
    finally:
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
        handler.close()


class SearchProgress(Callback):
    """A line when a trial starts (its search and parameters), a line per epoch (validation score,
    its best so far, training loss, time), and a bar over the job's trials."""

    def __init__(self, total_trials: int, metric: str, epochs: int):
        self.total, self.metric, self.epochs = total_trials, metric, epochs
        self.started: dict[str, float] = {}
        self.bar = None

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment; a bar is not
        return self.__dict__ | {"bar": None}

    def setup(self, **info):
        self.bar = tqdm(total=self.total, desc="trials", unit="trial", leave=False, disable=None)

    def _name(self, trial) -> str:
        return trial_name(trial.config)

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.started:  # paused at a rung (or the driver restarted)
            epoch = (trial.last_result or {}).get("epoch", 0)
            tqdm.write(f"{self._name(trial)}  resumed after epoch {epoch}")
            return
        self.started[trial.trial_id] = time.perf_counter()
        params = searched(trial.config).items()
        params = "  ".join(f"{k.split('.')[-1]}={short(v)}" for k, v in params)
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
        epochs_run = (trial.last_result or {}).get("epoch", self.epochs)
        stopped = stopped_early(epochs_run, self.epochs, failed=False)
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
