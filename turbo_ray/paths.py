"""Where every file goes: the one place that decides a job's folder, its Ray storage, the shards.

    paths = RunPaths.of(Path("runs/tune-20261128-101500"), cfg.train.storage_path)
    paths.config, paths.checkpoints, paths.search, paths.trial_dir(trial_id)

A job has a local output folder (`out`: its config, results, plots) and a Ray storage (`storage`:
checkpoints and Tune state) that is the same folder, or `<train.storage_path>/<folder name>` when
`train.storage_path` is a URI (s3://, gs://) that every node of a cluster can reach.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

if TYPE_CHECKING:
    from turbo_ray.config import DataConfig

RUNS = Path("runs")  # new output folders go here: runs/<job>-<time>


def storage_uri(path: str) -> str:
    """Ray wants absolute local paths; URIs (s3://, gs://, …) pass through."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def new_output_dir(job: str) -> Path:
    return (RUNS / f"{job}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()


def latest_output_dir(job: str) -> Path | None:
    """The newest runs/<job>-* folder that holds an experiment."""
    found = sorted(RUNS.glob(f"{job}-*/{RunPaths.CONFIG}"))
    return found[-1].parent.resolve() if found else None


def demo_corpus_dir(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() / f"demo-{cfg.demo_utterances_per_speaker}"


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
        uri = "://" in storage_path
        return cls(out, f"{storage_path.rstrip('/')}/{out.name}" if uri else str(out))

    @property
    def config(self) -> Path:
        return self.out / self.CONFIG

    @property
    def stored_config(self) -> str | None:
        """A copy of the config beside the Ray storage, when that is a URI: `--resume` from the
        storage alone (another machine, the output folder gone) starts from it."""
        return f"{self.storage}/{self.CONFIG}" if "://" in self.storage else None

    @property
    def checkpoints(self) -> str:
        """The Train runs of `turbo-ray train` (one per mode, seed and fold)."""
        return f"{self.storage}/checkpoints"

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

    def test_record(self, fold: int) -> str:
        """A fold's test row, written once its selected checkpoint is tested: a resumed job
        (on any machine) reads it instead of testing again."""
        return f"{self.storage}/tested/fold-{fold}.json"

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


def write_text(uri: str, text: str) -> None:
    """Write a small text file to a URI (s3://, gs://, file://), whole or not at all (a job killed
    meanwhile leaves no half file)."""
    fs, path = pafs.FileSystem.from_uri(uri)
    fs.create_dir(path.rsplit("/", 1)[0])
    with fs.open_output_stream(f"{path}.partial") as f:
        f.write(text.encode())
    fs.move(f"{path}.partial", path)


def read_text(uri: str) -> str | None:
    """A small text file at a URI, or None if there is none."""
    fs, path = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()
