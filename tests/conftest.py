"""Shared test setup: offline, no usage stats, small thread pools (2-core machines); one real
local Ray, one small demo corpus, the tiny job's overrides and one way to run a command as a user
would (its own process)."""

import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

# Ray workers import functions defined in test modules by module name: let them find this folder.
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])
)

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

torch.set_num_threads(2)
REPO = Path(__file__).parents[1]


@pytest.fixture
def seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_ray():
    """What `ray_local` started (its dashboard URL), shut down when the session ends."""
    import ray

    started = {}
    yield started
    ray.shutdown()


def _shared_local_ray(shared_ray: dict, tmp_path_factory) -> str | None:
    import ray

    from turbo_ray.runtime import init_ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_TMPDIR", str(tmp_path_factory.getbasetemp() / "ray"))
        shared_ray["dashboard"] = init_ray(object_store_mb=512)
    return shared_ray["dashboard"]


@pytest.fixture
def ray_local(shared_ray, tmp_path_factory):
    """A real local Ray as a job starts it (logical CPUs for the trials' feeds, the dashboard on:
    Tune needs the State API), shared by the tests that ask for it: the first starts it, the next
    find it running (a test that needs no Ray, or another cluster, shuts it down: the next use
    starts it again). Returns the dashboard URL."""
    return _shared_local_ray(shared_ray, tmp_path_factory)


@pytest.fixture(scope="module")
def ray_for_module(shared_ray, tmp_path_factory):
    """`ray_local` for a module-scoped fixture (a job whose results its module's tests share)."""
    return _shared_local_ray(shared_ray, tmp_path_factory)


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    """A small demo corpus in the IEMOCAP layout, its manifest and its Parquet shards."""
    from turbo_ray.config import DataConfig
    from turbo_ray.data.corpus import prepare_corpus

    cache = tmp_path_factory.mktemp("cache")
    return prepare_corpus(DataConfig(cache_dir=str(cache), demo_utterances_per_speaker=12))


@pytest.fixture(scope="session")
def tiny(demo_corpus):
    """The config overrides of a tiny job: the small demo corpus, 1 s crops, two epochs, a small
    head (a test's own overrides go after them: the last word wins)."""
    return [
        f"data.cache_dir={demo_corpus.root.parents[1]}",
        "data.demo_utterances_per_speaker=12",
        "data.val_fraction=0.25",
        "data.max_seconds=1.0",
        "train.epochs=2",
        "model.head_hidden=64",
    ]


@pytest.fixture(scope="session")
def launch(tmp_path_factory):
    """Start a command in its own process, as a user would, from the repository: `turbo-ray`'s
    subcommand (`launch("tune", ...)`) or a script (`launch("experiments/x.py", ...)`). Its own
    Ray (if it starts one) lives under a short RAY_TMPDIR (Ray's socket paths are short) unless
    `env` names another. Returns the Popen; `popen`: its keyword arguments."""
    ray_tmp = str(tmp_path_factory.getbasetemp() / "rp")

    def start(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
        script = args[0].endswith(".py")
        program = [str(REPO / args[0])] if script else ["-m", "turbo_ray.cli", args[0]]
        command = [sys.executable, *program, *args[1:]]
        env = os.environ | {"RAY_TMPDIR": ray_tmp} | (env or {})
        return subprocess.Popen(command, cwd=REPO, env=env, text=True, **popen)

    return start


@pytest.fixture(scope="session")
def run_command(launch):
    """Run `launch`'s command to its end; it must succeed. Returns what it printed (stdout and
    stderr together)."""

    def run(*args: str, env: dict | None = None, timeout: float = 600) -> str:
        process = launch(*args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = process.communicate(timeout=timeout)
        assert process.returncode == 0, out[-5000:]
        return out

    return run


def _check_mlflow_store(out: Path, scratch: Path) -> None:
    """A finished job's MLflow store (`<out>/mlflow.db`) holds what its results.json and trials.csv
    say, each once: one FINISHED parent with the folds' mean test UA (per mode); a FINISHED run per
    trial with its search's tags, its full config and every epoch's validation score; a run per
    search with its test scores, its selected trial and its confusion matrix. Nothing left
    RUNNING."""
    results = json.loads((out / "results.json").read_text())
    trials = pd.read_csv(out / "trials.csv", dtype={"trial": str})
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.status for r in runs} == {"FINISHED"}
    by_role = {role: [r for r in runs if r.data.tags["role"] == role] for role in ("trial", "fold")}
    (parent,) = [r for r in runs if r.data.tags["role"] == "experiment"]
    folds = pd.DataFrame(results["folds"])
    means = folds.groupby("mode").ua.mean()
    for mode, mean in means.items():
        name = "mean_test_ua" + (f"/{mode}" if len(means) > 1 or folds.seed.nunique() > 1 else "")
        assert parent.data.metrics[name] == pytest.approx(mean)
    trial_runs = {r.data.tags["trial_id"]: r for r in by_role["trial"]}
    assert len(trial_runs) == len(by_role["trial"]) == len(trials)  # each trial logged once
    batch_size = str(results["config"]["data"]["batch_size"])
    for _, row in trials.iterrows():
        run = trial_runs[row.trial]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        tags = {k: run.data.tags[k] for k in ("mode", "seed", "fold")}
        assert tags == {"mode": row["mode"], "seed": str(row.seed), "fold": str(row.fold)}
        for key in results["search"]["searched_per_mode"][row["mode"]]:
            assert float(run.data.params[key]) == pytest.approx(row[key])
        assert run.data.params["data.batch_size"] == batch_size  # the full config
        assert run.data.params["loss.mode"] == row["mode"]
        history = client.get_metric_history(run.info.run_id, "val_ua")
        assert [m.step for m in history] == list(range(1, row.epochs + 1))
        assert max(m.value for m in history) == pytest.approx(row.best_val_ua)

    def search(tags):
        return tags["mode"], int(tags["seed"]), int(tags["fold"])

    fold_runs = {search(r.data.tags): r for r in by_role["fold"]}
    assert len(fold_runs) == len(results["folds"])
    for fold in results["folds"]:
        run = fold_runs[fold["mode"], fold["seed"], fold["test_session"]]
        assert run.data.metrics["test_ua"] == pytest.approx(fold["ua"])
        assert run.data.tags["trial"] == fold["trial"]
        assert trial_runs[fold["trial"]].data.tags["selected_for_fold"] == str(fold["test_session"])
        confusion = client.download_artifacts(run.info.run_id, "confusion.json", str(scratch))
        assert json.loads(Path(confusion).read_text())["matrix"] == fold["confusion"]


@pytest.fixture(scope="session")
def mlflow_store_matches():
    """`check_mlflow_store(out, scratch)`: a finished job's MLflow store holds its results."""
    return _check_mlflow_store
