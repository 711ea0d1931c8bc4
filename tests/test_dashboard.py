"""The dashboard of a local Ray (as `init_ray` starts it): token auth on; a one-worker trial (its
own process) and a running TorchTrainer with its workers, visible through the HTTP API the pages
read. The Train run is one a job builds, and its checkpoints are kept and selected as a job's."""

import json
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import ray.train
import ray.tune

from turbo_ray.checkpoints import KEEP_SCORE, checkpoint_at, keep_score, selected_epoch
from turbo_ray.config import load_config
from turbo_ray.runners import build_trainer
from turbo_ray.tune import trial_resources

# the state API behind the dashboard's Actors page
ALIVE_ACTORS = (
    "/api/v0/actors?limit=1000&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE"
)
TRAIN_RUNS = "/api/train/v2/runs/v1"  # Train runs and their workers


def tied_epochs_then_wait(loop_config):
    """A Train run's loop that reports validation scores 0.5, 0.5, 0.25 (a checkpoint each, ranked
    as `fit` ranks them), then idles until the test touches `<storage_path>/stop`."""
    storage = Path(loop_config["config"]["train"]["storage_path"])
    rank = ray.train.get_context().get_world_rank()
    for epoch, score in ((1, 0.5), (2, 0.5), (3, 0.25)):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "epoch").write_text(str(epoch))
            checkpoint = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
            metrics = {"epoch": epoch, "val_ua": score, KEEP_SCORE: keep_score(score, epoch)}
            metrics |= {"best_val_ua": 0.5, "best_epoch": 1}  # ties go to the earlier epoch
            ray.train.report(metrics, checkpoint=checkpoint)
    while not (storage / "stop").exists():
        time.sleep(0.2)


def trial_waits_for(config):
    """A real (idle) Tune trial, reserved as a one-worker trial of the search is."""
    ray.tune.report({"started": 1})
    while not Path(config["marker"]).exists():
        time.sleep(0.2)


def get(url, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(
        urllib.request.Request(url, headers=headers), timeout=60
    ) as response:
        return response.status, json.loads(response.read())


def poll(url: str) -> dict | str:
    """The dashboard's answer (JSON), or why there is none yet (a string): on a loaded machine an
    answer can take seconds, and Train's endpoint answers 500 until its state actor exists. A
    refusal (401, 403) is an error."""
    try:
        return get(url, auth_token())[1]
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise
        return f"{err.code}: {err.read()[:300]!r}"
    except (urllib.error.URLError, TimeoutError) as err:  # not listening yet, or slow
        return repr(err)


def auth_token():
    return Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()  # the suite's (conftest)


@pytest.fixture(scope="module")
def watched(shared_ray, tmp_path_factory):
    """A two-worker Train run as a job builds one (`tied_epochs_then_wait`) and a one-worker Tune
    trial, both running while the dashboard is read: (what its pages' API showed, the Train run's
    result once it ended)."""
    url, storage = shared_ray, tmp_path_factory.mktemp("watched")
    cfg = load_config(None, ["train.num_workers=2", "train.num_to_keep=1"])
    cfg.train.storage_path = str(storage)
    splits = {"train": ["u"], "val": ["u"]}  # read by no one: the loop only reports
    trainer = build_trainer(
        cfg, "unread", splits, ["a", "b"], "visible-run", loop=tied_epochs_then_wait
    )
    tuner = ray.tune.Tuner(
        ray.tune.with_resources(trial_waits_for, trial_resources(load_config(None))),
        param_space={"marker": str(storage / "stop")},
        run_config=ray.tune.RunConfig(name="visible-search", storage_path=str(storage)),
    )
    ended = {}
    threads = [
        threading.Thread(target=lambda: ended.setdefault("run", trainer.fit())),
        threading.Thread(target=tuner.fit),
    ]
    for thread in threads:
        thread.start()
    seen = {}
    try:
        deadline, runs, last = time.time() + 300, [], None
        while not any(r["name"] == "visible-run" and r["status"] == "RUNNING" for r in runs):
            assert time.time() < deadline, f"run not visible on the dashboard: {runs or last}"
            time.sleep(1)
            last = poll(f"{url}{TRAIN_RUNS}")
            runs = last.get("train_runs", []) if isinstance(last, dict) else []
        seen["run"] = next(r for r in runs if r["name"] == "visible-run")
        # (the state API lists an actor as ALIVE a moment after it starts: poll)
        names = []  # Tune's trial actor is listed as ImplicitFunc or by its qualified name
        while sum(name.endswith("ImplicitFunc") for name in names) != 1:
            assert time.time() < deadline, f"the trial is not listed as alive: {names or last}"
            time.sleep(0.5)
            last = poll(f"{url}{ALIVE_ACTORS}")
            actors = last["data"]["result"]["result"] if isinstance(last, dict) else []
            names = [a["class_name"] for a in actors]
        seen["actors"] = names
        seen["anonymous"] = {api: anonymous(f"{url}{api}") for api in (TRAIN_RUNS, ALIVE_ACTORS)}
    finally:
        (storage / "stop").touch()
        for thread in threads:
            thread.join(timeout=120)
    return seen, ended["run"]


def anonymous(url: str) -> int:
    """The HTTP status of a request without the token."""
    try:
        return get(url)[0]
    except urllib.error.HTTPError as err:
        return err.code


def test_the_dashboard_shows_a_running_train_run_and_a_trial_to_token_holders_only(watched):
    seen, _ = watched
    assert len(seen["run"]["attempts"][-1]["workers"]) == 2
    # what the Actors page lists: the run's two workers, alive, beside its controller, and the
    # one-worker trial as a single process (Tune's trial actor), nothing of Ray Train's
    names = seen["actors"]
    assert names.count("RayTrainWorker") == 2 and "TrainController" in names, names
    assert sum(name.endswith("ImplicitFunc") for name in names) == 1
    assert all(code in (401, 403) for code in seen["anonymous"].values()), seen["anonymous"]


def test_of_equal_validation_scores_the_earlier_epoch_is_kept_and_selected(watched):
    # Ray keeps the later of two equally scored checkpoints; with one kept, selection (ties: the
    # earlier epoch) would silently get epoch 2
    _, run = watched
    checkpoint, metrics = checkpoint_at(run, selected_epoch(run, "val_ua"))
    assert metrics["epoch"] == 1 and (Path(checkpoint.path) / "epoch").read_text() == "1"
