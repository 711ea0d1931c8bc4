"""Shared test setup: offline, no usage stats, small thread pools (2-core machines); one real
local Ray, one small demo corpus, the tiny job's overrides, the whole jobs several modules assert
on (each run once per session), and one way to run a command as a user would (its own process).

Tiers and order. A test that uses one of `RAY_FIXTURES` (directly or through another fixture)
starts Ray or a job and is marked `job`; `make test-fast` runs the others. The job tests run
after the rest, in three groups, so that the shared Ray starts once and never idles beside a job
with a Ray of its own: first the commands that start their own Ray (`other_ray_dir`), then
everything on the shared Ray (`shared_ray`), last the tests that connect this process to
another Ray (`private_ray`), which stops the shared one."""

import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

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
import ray._private.utils
import torch

torch.set_num_threads(2)
# A local Ray turns token auth on and writes ~/.ray/auth_token when there is no token: the suite's
# Rays and jobs use a token of their own (removed with it), and the user's home stays as it was.
TOKEN = Path(tempfile.mkdtemp(prefix="turbo-ray-token-")) / "auth_token"
TOKEN.write_text(secrets.token_hex(32))
os.environ["RAY_AUTH_TOKEN_PATH"] = str(TOKEN)
os.environ.pop("RAY_AUTH_TOKEN", None)
REPO = Path(__file__).parents[1]
# in the order their tests run (see the module's docstring)
RAY_FIXTURES = ("other_ray_dir", "shared_ray", "private_ray")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# A suite stopped by a signal (a CI time limit) still prints its summary and durations: SIGTERM
# interrupts it like SIGINT, also once Ray is connected (`ray.init` would make it a bare exit).
signal.signal(signal.SIGTERM, _interrupt)
ray._private.utils.set_sigterm_handler = lambda handler: signal.signal(signal.SIGTERM, _interrupt)


def pytest_unconfigure(config):
    shutil.rmtree(TOKEN.parent, ignore_errors=True)


def pytest_collection_modifyitems(items):
    def group(item) -> int:
        used = [i for i, name in enumerate(RAY_FIXTURES) if name in item.fixturenames]
        return 1 + max(used) if used else 0

    for item in items:
        if group(item):
            item.add_marker(pytest.mark.job)
    items.sort(key=group)  # stable: within a group, the files' order


def pytest_configure(config):
    config.addinivalue_line("markers", "job: starts Ray or a whole job (`make test-fast` skips)")


@pytest.fixture(scope="session")
def ray_tmp(request):
    """`ray_tmp(name)`: a new folder for a Ray's temp files (RAY_TMPDIR). Ray's socket paths must
    stay short, and pytest's own folders are long, so these live under one short folder in /tmp,
    removed at the end of a session that passed (kept, with Ray's logs, when a test failed)."""
    root = Path(tempfile.mkdtemp(prefix="turbo-ray-", dir="/tmp"))

    def make(name: str) -> Path:
        (root / name).mkdir()
        return root / name

    yield make
    if not request.session.testsfailed:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def other_ray_dir(ray_tmp) -> Path:
    """The RAY_TMPDIR of the Rays that commands start in processes of their own: a job's local
    Ray, `ray start`, a local cluster."""
    return ray_tmp("own")


@pytest.fixture(scope="session")
def shared_ray(ray_tmp):
    """One real local Ray for this process, as a job starts it (logical CPUs for the trials'
    feeds, the trial-driver resource, the dashboard on: Tune needs the State API), started by the
    first test that asks, shared by every job run in this process. Returns its dashboard URL."""
    from turbo_ray.runtime import init_ray

    os.environ["RAY_TMPDIR"] = str(ray_tmp("shared"))
    dashboard = init_ray(object_store_mb=512)
    yield dashboard
    ray.shutdown()


@pytest.fixture(scope="module")
def private_ray():
    """This process leaves the shared Ray (stopped for good: these tests run last) for a Ray the
    test connects to itself (`ray.init`); disconnected afterwards."""
    ray.shutdown()
    yield
    ray.shutdown()


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


class Bucket:
    """An S3-compatible server (moto) on 127.0.0.1 holding one empty bucket: `env` points AWS
    clients (pyarrow's S3 filesystem under Ray Train, Tune and Data) at it."""

    NAME = "turbo"

    def __init__(self):
        import boto3
        from moto.server import ThreadedMotoServer

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        self.env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        self.client = boto3.client(
            "s3",
            endpoint_url=self.env["AWS_ENDPOINT_URL"],
            region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )
        self.client.create_bucket(Bucket=self.NAME)

    def uri(self, key: str) -> str:
        return f"s3://{self.NAME}/{key}"

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.NAME, Prefix=prefix
        )
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.NAME, Key=key)["Body"].read()


@pytest.fixture(scope="session")
def s3():
    """A local S3 server with an empty bucket (`Bucket`), for the jobs that keep their shards,
    checkpoints and state in object storage."""
    bucket = Bucket()
    yield bucket
    bucket.server.stop()


def run_main(*args: str, code: int = 0) -> str:
    """`turbo-ray ARGS` in this process (on the shared Ray, if it runs a job): it must exit with
    `code`. Returns what it printed (stdout and stderr together)."""
    from turbo_ray.cli import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        exit_code = main(list(args))
    assert exit_code == code, printed.getvalue()[-5000:]
    return printed.getvalue()


MAIN_JOB_START = {"train.lr": 0.002, "model.dropout": 0.15}


@pytest.fixture(scope="session")
def main_job(shared_ray, tiny, tmp_path_factory):
    """The main job as the tests run it: `turbo-ray tune --final`, a search per outer fold (2 of
    them) and a final search on all of the corpus, 2 trials each, two at once (one per search:
    TPE and ASHA see a search's trials in launch order); each search's first trial runs
    `MAIN_JOB_START`. Returns (its folder, what it printed, its overrides)."""
    root = tmp_path_factory.mktemp("main-job")
    space = root / "space.yaml"
    space.write_text(
        "train.lr: {loguniform: [3.0e-4, 3.0e-3]}\nmodel.dropout: {uniform: [0.05, 0.3]}\n"
        f"start: [{json.dumps(MAIN_JOB_START)}]\n"
    )
    overrides = [
        *tiny,
        "tune.folds=2",
        "tune.num_samples=2",
        "tune.max_concurrent_trials=2",
        "tune.final=true",
        f"tune.search_space={space}",
    ]
    out = root / "job"
    return out, run_main("tune", "--output-dir", str(out), *overrides), overrides


@pytest.fixture(scope="session")
def launch(other_ray_dir):
    """Start a command in its own process, as a user would, from the repository: `turbo-ray`'s
    subcommand (`launch("tune", ...)`) or a script (`launch("experiments/x.py", ...)`). A Ray it
    starts lives under `other_ray_dir` unless `env` names another RAY_TMPDIR (or RAY_ADDRESS, a
    Ray to join). Returns the Popen; `popen`: its keyword arguments."""

    def start(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
        script = args[0].endswith(".py")
        program = [str(REPO / args[0])] if script else ["-m", "turbo_ray.cli", args[0]]
        command = [sys.executable, *program, *args[1:]]
        env = os.environ | {"RAY_TMPDIR": str(other_ray_dir)} | (env or {})
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
    from mlflow.tracking import MlflowClient

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
    assert len(trial_runs) == len(by_role["trial"]) == len(trials) > 0  # each trial logged once
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
    assert len(fold_runs) == len(results["folds"]) > 0
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
