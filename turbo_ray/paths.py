"""Where every file goes: the one place that decides a job's folder, its Ray storage, the shards.

    paths = RunPaths.of(Path("runs/tune-20261128-101500"), cfg.train.storage_path)
    paths.config, paths.checkpoints, paths.search, paths.trial_dir(trial_id)

A job has a local output folder (`out`: its config, results, plots) and a Ray storage (`storage`:
checkpoints and Tune state) that is the same folder, or `<train.storage_path>/<folder name>` when
`train.storage_path` is a URI (s3://, gs://) that every node of a cluster can reach.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

from turbo_ray.config import DataConfig

RUNS = Path("runs")  # new output folders go here: runs/<job>-<time>
# a checkpoint's files: weights, optimizer and scheduler state (to resume), what it is (JSON)
MODEL_FILE, STATE_FILE, META_FILE = "model.pt", "train_state.pt", "meta.json"


def is_uri(location: str | Path) -> bool:
    """Object storage (s3://, gs://, file://…) rather than a local path: the one test of it."""
    return "://" in str(location)


def storage_uri(path: str) -> str:
    """Ray wants absolute local paths; URIs pass through."""
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def filesystem(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of a local path or a URI, for pyarrow's file operations."""
    if is_uri(location):
        fs, path = pafs.FileSystem.from_uri(str(location))
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))


def new_output_dir(job: str) -> Path:
    return (RUNS / f"{job}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()


def latest_output_dir(job: str) -> Path | None:
    """The newest runs/<job>-* folder that holds an experiment."""
    found = sorted(RUNS.glob(f"{job}-*/{RunPaths.CONFIG}"))
    return found[-1].parent.resolve() if found else None


def demo_corpus_dir(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() / f"demo-{cfg.demo_utterances_per_speaker}"


def local_cluster_config(cfg: DataConfig) -> Path:
    """Where `turbo-ray local-cluster up` writes the cluster config that `down` reads."""
    return Path(cfg.cache_dir).expanduser() / "local-cluster.yaml"


def shards_location(cfg: DataConfig, fingerprint: str) -> str:
    """`data.shards_dir` (a path or URI), else the cache's folder for this corpus and options."""
    return cfg.shards_dir or str(Path(cfg.cache_dir).expanduser() / "shards" / fingerprint)


@dataclass(frozen=True)
class RunPaths:
    """A job's places: its output folder and its Ray storage (see the module docstring)."""

    out: Path
    storage: str

    CONFIG = "config.yaml"  # a folder holding it holds an experiment
    SEARCH = "search"  # Tune's experiment state, under `storage`

    @classmethod
    def of(cls, out: Path, storage_path: str) -> RunPaths:
        out = out.resolve()
        return cls(
            out, f"{storage_path.rstrip('/')}/{out.name}" if is_uri(storage_path) else str(out)
        )

    @property
    def config(self) -> Path:
        return self.out / self.CONFIG

    @property
    def stored_config(self) -> str | None:
        """A copy of the config beside the Ray storage, when that is a URI: `--resume` from the
        storage alone (another machine, the output folder gone) starts from it."""
        return f"{self.storage}/{self.CONFIG}" if is_uri(self.storage) else None

    @property
    def checkpoints(self) -> str:
        """The Train runs of the fixed-config protocol (`run_name` each)."""
        return f"{self.storage}/checkpoints"

    @staticmethod
    def run_name(mode: str, seed: int, fold: int) -> str:
        """One mode, seed and fold of a job: the fixed-config protocol's Train run, the nested
        protocol's search."""
        return f"{mode}-seed{seed}-s{fold}"

    @property
    def search(self) -> str:
        """Tune's experiment: its state and a folder per trial (`trial_dir`)."""
        return f"{self.storage}/{self.SEARCH}"

    @staticmethod
    def trial_name(trial_id: str) -> str:
        return f"trial-{trial_id}"

    def trial_dir(self, trial_id: str) -> str:
        """A trial's folder: Tune's records, the utterances it saw, its checkpoints (its own, or
        its TorchTrainer run's: that run is named the same)."""
        return f"{self.search}/{self.trial_name(trial_id)}"

    def trial_utterances(self, trial_id: str) -> str:
        """The ids a trial trained and validated on, and its fold (JSON)."""
        return f"{self.trial_dir(trial_id)}/utterances.json"

    def relative(self, path: str) -> str:
        """A checkpoint's path as results and test records keep it: relative to the job's storage
        (its folder, or `train.storage_path`'s), so that the job can move."""
        return str(PurePosixPath(path).relative_to(filesystem(self.storage)[1]))

    def located(self, relative: str) -> str:
        """Where a `relative` path is now, as `filesystem(storage)` names it."""
        return f"{filesystem(self.storage)[1]}/{relative}"

    def test_record(self, mode: str, seed: int, fold: int) -> str:
        """A search's test row, written once its selected checkpoint is tested: a resumed job
        (on any machine) reads it instead of testing again."""
        return f"{self.storage}/tested/{self.run_name(mode, seed, fold)}.json"

    @property
    def results_csv(self) -> Path:
        """Per-fold test scores with mean and std rows."""
        return self.out / "results.csv"

    @property
    def results_json(self) -> Path:
        """The protocol, the config, what selected it and every fold's row."""
        return self.out / "results.json"

    @property
    def comparison_csv(self) -> Path:
        """Each mode against the baseline: paired difference, interval, p-value."""
        return self.out / "comparison.csv"

    @property
    def comparison_png(self) -> Path:
        """Per fold each mode's test UA, the pairs joined; each difference with its interval."""
        return self.out / "comparison.png"

    @property
    def confusion_png(self) -> Path:
        return self.out / "confusion.png"

    @property
    def trials_csv(self) -> Path:
        """One row per trial of the search."""
        return self.out / "trials.csv"

    @property
    def history_png(self) -> Path:
        return self.out / "optimization_history.png"

    @property
    def curves_png(self) -> Path:
        return self.out / "ua_per_epoch.png"

    @property
    def importances_png(self) -> Path:
        return self.out / "param_importances.png"

    def best_config(self, mode: str, seed: int, fold: int) -> Path:
        """The config a search selected, runnable with `turbo-ray train`."""
        return self.out / f"best_config_{self.run_name(mode, seed, fold)}.yaml"

    @property
    def model_dir(self) -> Path:
        """The final model's folder (`tune.final`), as `turbo-ray export` writes one."""
        return self.out / "model"

    @property
    def ray_log(self) -> Path:
        """Ray's driver-side log records (the terminal shows the job's own progress)."""
        return self.out / "ray.log"

    @property
    def mlflow_store(self) -> str:
        """The default MLflow store: a SQLite file in the output folder."""
        return f"sqlite:///{self.out / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> str:
        """The default store's artifacts (MLflow would put them in the working directory)."""
        return (self.out / "mlartifacts").as_uri()


def write_text(location: str, text: str) -> None:
    """Write a small text file to a local path or URI, whole or not at all (a job killed meanwhile
    leaves no half file)."""
    fs, path = filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0])
    with fs.open_output_stream(f"{path}.partial") as f:
        f.write(text.encode())
    fs.move(f"{path}.partial", path)


def read_text(location: str) -> str | None:
    """A small text file at a local path or URI, or None if there is none."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()
