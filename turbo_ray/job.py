"""A job's lifecycle, the same for every protocol: open (or resume) its output folder with its
config, prepare the corpus, start or join Ray and save the config, then finish: the result files,
MLflow, and the checkpoints no result came from pruned.

    job = Job.open("tune", cfg, out, resume)      # its config, paths and corpus
    with job.on_ray(address):                     # Ray started or joined; config.yaml saved
        rows = ...                                # the protocol: train, select, test
        job.prune(job.paths.search, rows)
        return job.finish(rows, by=["mode"])      # a JobResult
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd
import yaml

from turbo_ray.checkpoints import prune_checkpoints
from turbo_ray.comparison import compared_with_baseline, format_comparison
from turbo_ray.config import Config, load_config, override
from turbo_ray.data.corpus import Corpus, prepare_corpus
from turbo_ray.errors import UsageError
from turbo_ray.formatting import counted
from turbo_ray.paths import (
    RunPaths,
    is_uri,
    latest_output_dir,
    new_output_dir,
    read_text,
    write_text,
)
from turbo_ray.progress import ray_logs_in
from turbo_ray.results import format_table, selection_table, write_results
from turbo_ray.runtime import init_ray, require_driver_resource, running_ray
from turbo_ray.tracking import Tracker
from turbo_ray.trials import not_comparable


def protocol(corpus: Corpus, nested: bool) -> str:
    """How results.json and MLflow name a job's protocol: its outer folds (`loso`, `logo`,
    `group-kfold`, `split`), "nested-" where each fold's config was searched."""
    return f"nested-{corpus.outer.kind}" if nested else corpus.outer.kind


@dataclass(frozen=True)
class JobResult:
    """A finished job: its rows (one per tested fold, and mode and seed), files and tracker."""

    nested: bool  # each fold's config searched (the main job), or one given config
    cfg: Config
    paths: RunPaths
    corpus: Corpus
    rows: pd.DataFrame
    by: list[str] | None  # the columns that group the rows (None: one run)
    files: list[Path]
    tracker: Tracker
    joined: bool  # ran on a Ray that outlives the job (its dashboard stays)
    comparison: pd.DataFrame | None  # each mode against the baseline, paired (`comparison.py`)
    model: Path | None = None  # the final model's folder (`tune.final`)
    search: dict | None = None  # what selected each search's config (the main job)

    @property
    def protocol(self) -> str:
        return protocol(self.corpus, self.nested)

    def table(self) -> str:
        """The test scores per fold, with mean and std (per group); the folds run, where fewer
        than the corpus has."""
        run, every = self.rows["test_session"].nunique(), len(self.corpus.outer.groups)
        some = f", {run} of its {every} folds" if run < every else ""
        if self.nested:
            title = (
                f"Nested {self.corpus.outer.title} ({self.protocol}{some}): test scores of each "
                f"fold's selected checkpoint, {self.corpus.label}"
            )
        else:
            title = (
                f"Test scores of the best-val epoch ({self.protocol}{some}), {self.corpus.label}"
            )
        return format_table(self.rows, title, self.by)

    def selection(self) -> str:
        """What each search selected (nested protocol only), and whether a trial failed."""
        caveat = not_comparable(self.search["failed_trials"])
        return selection_table(self.rows, self.cfg, self.by) + (f"\n{caveat}" if caveat else "")

    def compared(self) -> str | None:
        """Each mode against the baseline, paired over folds and seeds (None: no baseline run)."""
        if self.comparison is None:
            return None
        seeds = ",".join(str(s) for s in sorted(self.rows["seed"].unique()))
        folds = self.rows["test_session"].nunique()
        if self.nested:
            how = f"a search per mode and fold, {counted(self.cfg.tune.num_samples, 'trial')} each"
        else:
            how = "one fixed config for all modes"
        title = (
            f"Paired comparison with the baseline ({self.protocol}, {how}, "
            f"{self.cfg.train.epochs} epochs; seeds {seeds}; "
            f"{counted(folds, 'fold')}), {self.corpus.label}"
        )
        return format_comparison(self.comparison, title)


@dataclass
class Job:
    """One job of a protocol (`nested`: each fold's config searched): its config, places and
    corpus; once on Ray, whether it joined a Ray that outlives it, and its MLflow tracker."""

    nested: bool
    cfg: Config
    paths: RunPaths
    resume: bool = False
    joined: bool = False
    tracker: Tracker | None = field(default=None, repr=False)

    @classmethod
    def open(cls, name: str, cfg: Config, out: Path | None, resume: bool = False) -> Job:
        """The job `name` ("tune": nested, or "train") in `out`: a new folder that holds no
        experiment, or (`resume`) the folder of one, run with that experiment's own config; its
        corpus prepared when first asked for."""
        cfg, paths = open_folder(name, cfg, out, resume)
        return cls(name == "tune", cfg, paths, resume)

    @cached_property
    def corpus(self) -> Corpus:
        """The corpus, its report printed and its folds checked (every split non-empty)."""
        corpus = prepare_corpus(self.cfg.data)
        print(corpus.summary())
        corpus.folds(self.cfg.data)
        return corpus

    @property
    def protocol(self) -> str:
        return protocol(self.corpus, self.nested)

    @contextmanager
    def on_ray(self, address: str | None, drives_trainers: bool = False) -> Iterator[Job]:
        """Ray started or joined (Ray's logs to the job's ray.log) and checked
        (`drives_trainers`: its trials drive TorchTrainers); only then the config saved, so that
        a Ray that cannot run the job leaves the folder free for the same command."""
        with ray_logs_in(self.paths.ray_log):
            print(f"experiment {self.paths.out}{'  (resumed)' if self.resume else ''}")
            print(f"Ray's own log: {self.paths.ray_log}")
            self.joined = start_or_join(address)
            if drives_trainers:
                require_driver_resource()
            if not self.resume:
                self.save_config()
            self.tracker = Tracker.open(self.cfg, self.paths, self.protocol, self.corpus.label)
            yield self

    def save_config(self) -> None:
        """config.yaml in the output folder (and a copy in the storage, where that is a URI)."""
        self.paths.config.write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        if self.paths.stored_config:
            write_text(self.paths.stored_config, self.paths.config.read_text())

    def prune(self, storage: str, rows: list[dict]) -> None:
        """Unless `train.keep_checkpoints`, keep under `storage` only the weights of the
        checkpoints tested (`rows`, their paths relative to the job's storage)."""
        if not self.cfg.train.keep_checkpoints:
            prune_checkpoints(storage, {self.paths.located(row["checkpoint"]) for row in rows})

    def finish(
        self,
        rows: list[dict],
        by: list[str] | None,
        files: list[Path] | None = None,
        search: dict | None = None,
        model: Path | None = None,
    ) -> JobResult:
        """Compare the modes (if the job ran the baseline and another), write the result files,
        log the folds and close the experiment's MLflow run. `by`: the columns that group the
        rows (None: one run); `files`: those the protocol wrote already; `search`: what selected
        each search's config (the nested protocol); `model`: the final model's folder."""
        table = pd.DataFrame(rows)
        classes = list(self.corpus.classes)
        comparison = compared_with_baseline(table)
        run = sorted(int(k) for k in table["test_session"].unique())  # the folds tested
        setup = {
            "protocol": self.protocol,
            "outer_folds": self.corpus.outer.record() | {"run": run},
        }
        setup |= {"search": search} if search else {}
        files = (files or []) + write_results(
            table, self.paths, classes, self.cfg, setup, by, comparison
        )
        self.tracker.log_folds(table, self.cfg, classes)
        self.tracker.finish(table, files, by, comparison)
        return JobResult(
            nested=self.nested,
            cfg=self.cfg,
            paths=self.paths,
            corpus=self.corpus,
            rows=table,
            by=by,
            files=files,
            tracker=self.tracker,
            joined=self.joined,
            comparison=comparison,
            model=model,
            search=search,
        )


def start_or_join(address: str | None) -> bool:
    """Join the Ray at `address`, or the one already running here, or start one; returns whether
    the job joined a Ray that outlives it (its dashboard stays)."""
    running = None if address else running_ray()
    if running:
        print(f"joining the Ray already running here at {running} (--address picks another)")
    if dashboard := init_ray(address):
        print(f"Ray dashboard: {dashboard}  (trials, workers, CPU/GPU and memory use)")
    return bool(address or running)


def open_folder(name: str, cfg: Config, out: Path | None, resume: bool) -> tuple[Config, RunPaths]:
    """The job's config and places. A new job needs a folder that holds no experiment; a resumed
    one, the folder of one (or its config, fetched from `train.storage_path` where that is a URI),
    and runs with that experiment's own config."""
    if resume:
        out = out or latest_output_dir(name)
        if out is None:
            raise UsageError(f"--resume: no runs/{name}-* experiment here; pass --output-dir DIR")
        fetch_stored_config(Path(out).resolve(), cfg)
    out = Path(out or new_output_dir(name)).resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {out} is a file, not a folder")
    holds_experiment = (out / RunPaths.CONFIG).is_file()
    if resume and not holds_experiment:
        raise UsageError(
            f"--resume: {out} holds no experiment (no {RunPaths.CONFIG}); to resume from object "
            f"storage alone, pass the same --output-dir name and train.storage_path=<URI>"
        )
    if not resume and holds_experiment:
        raise UsageError(
            f"{out} already holds an experiment: pass --resume, or another --output-dir"
        )
    cfg = load_config(out / RunPaths.CONFIG) if resume else anchored(cfg)
    return cfg, RunPaths.of(out, cfg.train.storage_path)


def anchored(cfg: Config) -> Config:
    """The data's local paths made absolute where the job starts: a trial's process runs in a
    folder of Ray's (URIs and `~/…` stay as they are)."""
    data = cfg.data
    relative = {
        f"data.{key}": str(Path(value).resolve())
        for key in ("data_dir", "cache_dir", "shards_dir")
        if (value := getattr(data, key))
        and not is_uri(value)
        and not Path(value).expanduser().is_absolute()
    }
    return override(cfg, relative)


def fetch_stored_config(out: Path, given: Config) -> None:
    """--resume where the output folder is gone (another machine, a deleted folder): with
    `train.storage_path=<URI>` given, the config the job stored there is fetched into `out`."""
    stored = RunPaths.of(out, given.train.storage_path).stored_config
    if (out / RunPaths.CONFIG).is_file() or not stored or (text := read_text(stored)) is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / RunPaths.CONFIG).write_text(text)
    print(f"config fetched from {stored}")
