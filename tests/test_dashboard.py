"""The dashboard of a local Ray (as `init_ray` starts it): token auth on; a one-worker trial (its
own process) and a running TorchTrainer with its workers, visible through the HTTP API the pages
read."""

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import ray.train
import ray.tune
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from turbo_ray.config import load_config
from turbo_ray.tune import trial_resources

# the state API behind the dashboard's Actors page
ALIVE_ACTORS = (
    "/api/v0/actors?limit=1000&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE"
)


def wait_for(config):
    """A real (idle) Train run that lasts until the test says so."""
    ray.train.report({"started": 1})
    while not Path(config["marker"]).exists():
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
    return (
        os.environ.get("RAY_AUTH_TOKEN")
        or (Path.home() / ".ray" / "auth_token").read_text().strip()
    )


def test_dashboard_shows_a_running_train_run_and_refuses_anonymous_requests(shared_ray, tmp_path):
    url = shared_ray
    assert url.startswith("http://127.0.0.1:")  # never on a public interface
    marker = tmp_path / "stop"
    trainer = TorchTrainer(
        wait_for,
        train_loop_config={"marker": str(marker)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=RunConfig(name="visible-run", storage_path=str(tmp_path)),
    )
    tuner = ray.tune.Tuner(
        ray.tune.with_resources(trial_waits_for, trial_resources(load_config(None))),
        param_space={"marker": str(marker)},
        run_config=ray.tune.RunConfig(name="visible-search", storage_path=str(tmp_path)),
    )
    threads = [threading.Thread(target=trainer.fit), threading.Thread(target=tuner.fit)]
    for thread in threads:
        thread.start()
    try:
        deadline, runs, last = time.time() + 300, [], None
        while not any(r["name"] == "visible-run" and r["status"] == "RUNNING" for r in runs):
            assert time.time() < deadline, f"run not visible on the dashboard: {runs or last}"
            time.sleep(1)
            last = poll(f"{url}/api/train/v2/runs/v1")
            runs = last.get("train_runs", []) if isinstance(last, dict) else []
        run_info = next(r for r in runs if r["name"] == "visible-run")
        assert len(run_info["attempts"][-1]["workers"]) == 2
        # what the Actors page lists: the run's two workers, alive, beside its controller, and
        # the one-worker trial as a single process (Tune's trial actor), nothing of Ray Train's.
        # (The state API lists an actor as ALIVE a moment after it starts: poll.)
        names = []  # Tune's trial actor is listed as ImplicitFunc or by its qualified name
        while sum(name.endswith("ImplicitFunc") for name in names) != 1:
            assert time.time() < deadline, f"the trial is not listed as alive: {names or last}"
            time.sleep(0.5)
            last = poll(f"{url}{ALIVE_ACTORS}")
            actors = last["data"]["result"]["result"] if isinstance(last, dict) else []
            names = [a["class_name"] for a in actors]
        assert names.count("RayTrainWorker") == 2 and "TrainController" in names, names

        for api in ("/api/train/v2/runs/v1", ALIVE_ACTORS):
            try:
                get(f"{url}{api}")
                raise AssertionError(f"an unauthenticated request to {api} was answered")
            except urllib.error.HTTPError as err:
                assert err.code in (401, 403)
    finally:
        marker.touch()
        for thread in threads:
            thread.join(timeout=120)
