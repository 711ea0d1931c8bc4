"""The main job (`turbo-ray tune`) end to end in real subprocesses: Optuna + ASHA, driver killed, --resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from ray.tune.search.optuna import OptunaSearch

from turbo_ray.cli import main
from turbo_ray.config import load_config
from turbo_ray.tune import SearchSpaceError, load_search_space

REPO = Path(__file__).parents[1]


def test_packaged_search_space_loads():
    space = load_search_space(REPO / "experiments/configs/search_space.yaml")
    assert {p.key for p in space.params} >= {"loss.temperature", "model.dropout", "loss.w_in", "loss.w_cross",
                                              "train.lr"}


@pytest.mark.parametrize("text, message", [
    ("loss.temprature: {loguniform: [0.01, 0.5]}", "unknown config key 'loss.temprature'"),
    ("loss.temperature: {lognormal: [0.01, 0.5]}", "unknown distribution 'lognormal'"),
    ("loss.temperature: {loguniform: [0.5, 0.01]}", "low < high"),
    ("loss.temperature: {loguniform: [0.0, 0.5]}", "0 < low < high"),
    ("train.lr: {loguniform: [1e-4, 1e-3]}", "needs \\[low, high\\]"),  # YAML reads 1e-4 as a string
    ("model.dropout: {uniform: [0.1, 1.5]}", "model.dropout must be in \\[0, 1\\)"),
    ("loss.mode: {choice: [turbo, both]}", "loss.mode must be one of"),
    ("loss.temperature: 0.1", "expected one distribution"),
    ("train.lr: {uniform: [0.1, 0.2]}\nstart: [{loss.w_in: 0.5}]", "'loss.w_in', which is not searched"),
    ("[1, 2]", "expected a non-empty mapping"),
    ("a: [", "cannot read the search space"),
])
def test_bad_search_space_is_named(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SearchSpaceError, match=message) as err:
        load_search_space(path)
    assert str(path) in str(err.value)


def test_cli_reports_a_bad_search_space_before_starting_anything(tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text("loss.temperature: {uniform: [0.1]}\n")
    assert main(["tune", "--search-space", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    assert f"{path}: loss.temperature: uniform needs [low, high]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()



def test_search_with_asha_survives_a_killed_driver(demo_corpus, tmp_path, tmp_path_factory):
    # a learning rate that learns, then two that cannot: ASHA must cut those at its first rung
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {loguniform: [1.0e-9, 3.0e-3]}\n"
                     "start: [{train.lr: 2.0e-3}, {train.lr: 1.0e-9}, {train.lr: 1.0e-9}]\n")
    out = tmp_path / "exp"
    cache = demo_corpus.root.parents[1]
    command = [sys.executable, "-m", "turbo_ray.cli", "tune", "--output-dir", str(out), "--search-space", str(space),
               "--num-samples", "3", "--final-folds", "1", "--workers-per-trial", "1",
               f"data.cache_dir={cache}", "data.demo_utterances_per_speaker=12", "data.val_fraction=0.3",
               "data.max_seconds=2.0", "data.batch_size=8", "train.epochs=2", "model.head_hidden=64"]
    env = os.environ | {"RAY_TMPDIR": str(tmp_path_factory.getbasetemp() / "rt")}  # short: Ray's socket paths
    with open(tmp_path / "first.log", "w") as log:  # the driver keeps its own handle
        driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    deadline = time.time() + 420
    while len(list((out / "trials").glob("trial-*"))) < 2:  # the first trial is done, the second started
        assert time.time() < deadline and driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(1)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its local Ray die at once
    driver.wait()
    first = min((out / "trials").glob("trial-*"), key=lambda p: p.stat().st_mtime)
    first_checkpoints = sorted(p.name for p in first.glob("checkpoint_*") if p.is_dir())
    first_results = (next((out / "search").glob(f"*{first.name.removeprefix('trial-')}*")) / "result.json")
    first_lines = first_results.read_text().splitlines()
    assert len(first_checkpoints) == 2 and len(first_lines) == 2

    resumed = subprocess.run([*command, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                             check=False)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "(resumed)" in resumed.stdout and "test_session" in resumed.stdout
    assert "no problems" in resumed.stdout  # the corpus report, as `prepare` prints it
    # the finished trial was not run again
    assert sorted(p.name for p in first.glob("checkpoint_*") if p.is_dir()) == first_checkpoints
    assert first_results.read_text().splitlines() == first_lines

    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 3 and trials.error.isna().all()
    assert trials.stopped_early.sum() >= 1 and trials.epochs.min() < 2
    best = load_config(out / "best_config.yaml")
    assert best.train.lr == pytest.approx(trials.loc[trials.best_val_ua.idxmax(), "train.lr"])
    # TPE was told each trial's best epoch (the score that selects), not its last one
    searcher = OptunaSearch()
    searcher.restore_from_dir(str(out / "search"))
    study = searcher._ot_study
    told = {trial_id: study.trials[trial.number].value for trial_id, trial in searcher._ot_trials.items()}
    assert told == pytest.approx(dict(zip(trials.trial, trials.best_val_ua)))
    results = json.loads((out / "results.json").read_text())
    assert [f["test_session"] for f in results["folds"]] == [1]
    for name in ("optimization_history.png", "ua_per_epoch.png", "confusion.png", "results.csv"):
        assert (out / name).stat().st_size > 0
