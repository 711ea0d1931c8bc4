"""The main job (`turbo-ray tune`) end to end in real subprocesses: Optuna + ASHA, driver killed,
--resume."""

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import ray
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from turbo_ray.cli import main
from turbo_ray.progress import RAY_LOGGERS
from turbo_ray.search_space import SearchSpaceError, load_search_space
from turbo_ray.trials import FOLD
from turbo_ray.tune import FoldASHA, FoldSearch, SchedulerState

REPO = Path(__file__).parents[1]


def test_packaged_search_space_loads():
    space = load_search_space(REPO / "experiments/configs/search_space.yaml")
    assert {p.key for p in space.params} >= {
        "loss.temperature",
        "model.dropout",
        "loss.w_in",
        "loss.w_cross",
        "train.lr",
    }


@pytest.mark.parametrize(
    "text, message",
    [
        ("loss.temprature: {loguniform: [0.01, 0.5]}", "unknown config key 'loss.temprature'"),
        ("loss.temperature: {lognormal: [0.01, 0.5]}", "unknown distribution 'lognormal'"),
        ("loss.temperature: {loguniform: [0.5, 0.01]}", "low < high"),
        ("loss.temperature: {loguniform: [0.0, 0.5]}", "0 < low < high"),
        (
            "train.lr: {loguniform: [1e-4, 1e-3]}",
            "needs \\[low, high\\]",
        ),  # YAML reads 1e-4 as a string
        ("model.dropout: {uniform: [0.1, 1.5]}", "model.dropout must be in \\[0, 1\\)"),
        ("loss.mode: {choice: [turbo, both]}", "loss.mode must be one of"),
        ("loss.temperature: 0.1", "expected one distribution"),
        (
            "train.lr: {uniform: [0.1, 0.2]}\nstart: [{loss.w_in: 0.5}]",
            "'loss.w_in', which is not searched",
        ),
        ("[1, 2]", "expected a non-empty mapping"),
        ("a: [", "cannot read the search space"),
    ],
)
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


def test_asha_is_per_fold_and_keeps_its_rungs_in_tunes_state_across_a_restart():
    def scheduler():
        return FoldASHA(
            [1, 2],
            metric="best_val_ua",
            mode="max",
            time_attr="epoch",
            max_t=4,
            grace_period=1,
            reduction_factor=2,
        )

    def trial(name, fold):
        return Trial("trainable", config={FOLD: fold}, trial_id=name, stub=True)

    first = scheduler()
    a, b, c = trial("a", 1), trial("b", 1), trial("c", 2)
    for t in (a, b, c):
        first.on_trial_add(None, t)
    assert (
        first.on_trial_result(None, a, {"epoch": 1, "best_val_ua": 0.9}) == TrialScheduler.CONTINUE
    )
    assert first.on_trial_result(None, b, {"epoch": 1, "best_val_ua": 0.3}) == TrialScheduler.STOP
    # fold 2 has its own rungs: its first trial is not measured against fold 1's
    assert (
        first.on_trial_result(None, c, {"epoch": 1, "best_val_ua": 0.2}) == TrialScheduler.CONTINUE
    )
    # Tune saves its callbacks' states with the experiment (pickled); the driver dies; the restored
    # callback hands fold 1's rung (0.9, 0.3) to the new scheduler before its first decision
    saved = pickle.dumps(SchedulerState(first).get_state())
    again = scheduler()
    SchedulerState(again).set_state(pickle.loads(saved))
    d = trial("d", 1)
    again.on_trial_add(None, d)
    assert again.on_trial_result(None, d, {"epoch": 1, "best_val_ua": 0.1}) == TrialScheduler.STOP
    fresh = scheduler()  # without the saved state, the same result would continue
    fresh.on_trial_add(None, d)
    assert fresh.on_trial_result(None, d, {"epoch": 1, "best_val_ua": 0.1}) != TrialScheduler.STOP


def test_nested_search_keeps_each_test_session_out_and_survives_a_killed_driver(
    demo_corpus, tiny, launch, run_command, mlflow_store_matches, tmp_path
):
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {loguniform: [1.0e-4, 3.0e-3]}\nstart: [{train.lr: 2.0e-3}]\n")
    out = tmp_path / "exp"
    command = [
        "tune",
        "--output-dir",
        str(out),
        "--search-space",
        str(space),
        "--num-samples",
        "1",
        "--folds",
        "3",
        "--workers-per-trial",
        "1",
        "--max-concurrent-trials",
        "1",
        *tiny,
        "train.num_to_keep=2",
    ]
    with open(tmp_path / "first.log", "w") as log:  # the driver keeps its own handle
        driver = launch(*command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    deadline = time.time() + 420
    # folds 1 and 2 searched, fold 3's trial has its first checkpoint: kill it mid-trial
    while len({c.parent for c in (out / "search").glob("trial-*/checkpoint_*")}) < 3:
        assert time.time() < deadline and driver.poll() is None, (
            tmp_path / "first.log"
        ).read_text()[-3000:]
        time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its local Ray die at once
    driver.wait()
    finished = sorted((out / "search").glob("trial-*"), key=lambda p: p.stat().st_mtime)[:2]
    before = {
        p.name: sorted(c.name for c in p.glob("checkpoint_*") if c.is_dir()) for p in finished
    }
    assert all(len(names) == 2 for names in before.values()), before

    resumed = run_command(*command, "--resume")
    assert "(resumed)" in resumed and "no problems" in resumed  # the corpus report
    assert "Nested leave-one-session-out (nested-loso)" in resumed
    # no finished trial started again; the interrupted one went on
    assert "fold 1 trial 0  started" in (tmp_path / "first.log").read_text()
    assert "fold 1 trial 0  started" not in resumed
    assert "fold 2 trial 0  started" not in resumed
    assert "fold 3 trial 0  epoch 2/2" in resumed
    # folds 1 and 2 were not searched again: what is left of their checkpoints was there before
    for p in finished:
        assert {c.name for c in p.glob("checkpoint_*") if c.is_dir()} <= set(before[p.name])

    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == "nested-loso"
    assert [f["test_session"] for f in results["folds"]] == [1, 2, 3]
    for fold in results["folds"]:
        assert fold["search_sessions"] == [s for s in range(1, 6) if s != fold["test_session"]]
        assert set(fold["params"]) == {"train.lr"} and 1 <= fold["best_epoch"] <= 2
        assert {"trial", "val_ua", "wa", "ua", "f1", "confusion"} <= set(fold)
    # the finished job kept only the weights of each fold's selected checkpoint
    kept = sorted(str(c) for c in (out / "search").glob("trial-*/checkpoint_*") if c.is_dir())
    assert kept == sorted(fold["checkpoint"] for fold in results["folds"])
    assert all(sorted(f.name for f in Path(c).iterdir()) == ["meta.json", "model.pt"] for c in kept)
    trials = pd.read_csv(out / "trials.csv", dtype={"trial": str})
    assert sorted(trials.fold) == [1, 2, 3] and trials.error.isna().all()
    for name in (
        "optimization_history.png",
        "ua_per_epoch.png",
        "confusion.png",
        "best_config_s3.yaml",
    ):
        assert (out / name).stat().st_size > 0

    # what every trial trained and validated on: never its fold's test session, no validation
    # speaker in training
    manifest = demo_corpus.manifest.set_index("utterance_id")
    # (a trial the killed driver had started but Tune had not yet saved is re-proposed under a new
    # id: its record stays, and is checked too)
    records = [
        json.loads((run / "utterances.json").read_text())
        for run in (out / "search").glob("trial-*")
    ]
    assert {r["fold"] for r in records} == {1, 2, 3}
    for record in records:
        seen = manifest.loc[record["train"] + record["val"]]
        assert record["fold"] not in set(seen.session)
        assert not set(manifest.loc[record["val"], "speaker"]) & set(
            manifest.loc[record["train"], "speaker"]
        )

    # MLflow (the run folder's SQLite store): one run per trial with its full config and every
    # epoch's score, each exactly once although the driver died and resumed mid-search
    assert f"ui --backend-store-uri sqlite:///{out / 'mlflow.db'}" in resumed
    mlflow_store_matches(out, tmp_path)

    # each fold's TPE was told its trials' best epoch (the score that selects), not the last one
    searcher = FoldSearch([1, 2, 3], 1, "best_val_ua", [], 0)
    searcher.restore_from_dir(str(out / "search"))
    for fold, optuna_search in searcher.searchers.items():
        told = [t.value for t in optuna_search._ot_study.trials]
        assert told == pytest.approx(trials[trials.fold == fold].best_val_ua.tolist())


def scores(out: Path) -> dict:
    (fold,) = json.loads((out / "results.json").read_text())["folds"]
    return {k: fold[k] for k in ("wa", "ua", "f1", "confusion", "best_epoch", "val_ua")}


def history(trial: Path) -> list[dict]:
    """What Tune recorded of a trial, epoch by epoch."""
    return [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]


def test_one_worker_scores_the_same_in_a_trial_a_reused_trial_and_a_torch_trainer(
    ray_local, tiny, tmp_path
):
    # the space holds only the default lr: the search's two trials (one lane) and `turbo-ray train`
    # (a one-worker TorchTrainer) run one config and seed; the second trial runs in the process
    # Tune kept from the first
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {choice: [1.0e-3]}\n")
    tuned = ["--num-samples", "2", "--max-concurrent-trials", "1", "--search-space", str(space)]
    assert (
        main(["tune", *tuned, "--folds", "1", "--output-dir", str(tmp_path / "tune"), *tiny]) == 0
    )
    assert main(["train", "--folds", "1", "--output-dir", str(tmp_path / "train"), *tiny]) == 0
    assert scores(tmp_path / "tune") == scores(tmp_path / "train")
    trials = pd.read_csv(tmp_path / "tune" / "trials.csv", dtype={"trial": str})
    first, second = (history(tmp_path / "tune" / "search" / f"trial-{t}") for t in trials.trial)
    assert first[0]["pid"] == second[0]["pid"]  # reused
    for a, b in zip(first, second, strict=True):
        assert {k: v for k, v in a.items() if k.startswith(("train_", "val_"))} == {
            k: v for k, v in b.items() if k.startswith(("train_", "val_"))
        }
    # no Train run: Tune kept the trials' checkpoints
    assert not list((tmp_path / "tune" / "search").glob("trial-*/checkpoint_manager_snapshot*"))


def test_the_main_job_reproduces_resumes_from_its_config_alone_and_resumes_finished(
    ray_local, tiny, mlflow_store_matches, tmp_path, capsys
):
    # 2 folds x 3 trials, two trials at once (a fold's TPE and ASHA see its trials in launch order)
    space = tmp_path / "space.yaml"
    space.write_text(
        "train.lr: {loguniform: [3.0e-4, 3.0e-3]}\nmodel.dropout: {uniform: [0.05, 0.3]}\n"
    )
    overrides = tiny + [
        "tune.folds=2",
        "tune.num_samples=3",
        "tune.max_concurrent_trials=2",
        f"tune.search_space={space}",
    ]

    def tune(out, *flags):
        assert main(["tune", "--output-dir", str(out), *flags, *overrides]) == 0
        return capsys.readouterr().out

    # a job killed after it saved its config, before Tune first saved its own state, resumes
    killed = tmp_path / "killed"
    killed.mkdir()
    assert main(["config", *overrides]) == 0
    (killed / "config.yaml").write_text(capsys.readouterr().out)
    tune(killed, "--resume")
    fresh = tmp_path / "fresh"
    printed = tune(fresh)

    def selection(out):
        results = json.loads((out / "results.json").read_text())
        trials = pd.read_csv(out / "trials.csv", dtype={"trial": str}).drop(columns=["trial"])
        drop = ("trial", "checkpoint")
        return [{k: v for k, v in f.items() if k not in drop} for f in results["folds"]], trials

    (killed_folds, killed_trials), (folds, trials) = selection(killed), selection(fresh)
    assert killed_folds == folds  # the same selections and test scores
    pd.testing.assert_frame_equal(killed_trials, trials)  # the same proposals, the same stops
    assert len(trials) == 6
    results = json.loads((fresh / "results.json").read_text())
    assert results["search"]["sampler_seeds"] == {"1": 1, "2": 2}
    assert "train.lr" in results["search"]["space"]

    # resuming the finished job trains nothing and prints the same tables
    kept = sorted(fresh.glob("search/trial-*/checkpoint_*"))
    again = tune(fresh, "--resume")
    assert " started " not in again and "(resumed)" in again
    tables = printed[printed.index("Selected per fold") : printed.index("wrote ")]
    assert tables in again
    assert sorted(fresh.glob("search/trial-*/checkpoint_*")) == kept
    mlflow_store_matches(fresh, tmp_path)
    header = (fresh / "best_config_s2.yaml").read_text().splitlines()[1]
    assert header.endswith(f"--config {fresh / 'best_config_s2.yaml'} --fold 2")


def test_two_jobs_beside_a_ray_started_by_ray_start_join_it_and_finish(
    tiny, launch, tmp_path, tmp_path_factory
):
    # the README's way to keep a dashboard: `ray start --head` first; then two jobs at once,
    # without --address (one drives a two-worker TorchTrainer), while this test process holds a
    # Ray of its own beside them
    ray_tmp = tmp_path_factory.getbasetemp() / "rj"  # short: Ray's socket paths
    env = {"RAY_TMPDIR": str(ray_tmp)}
    started = subprocess.run(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--port=0",
            "--num-cpus=6",
            '--resources={"train_driver": 8}',
            "--include-dashboard=false",
        ],
        env=os.environ | env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        jobs = [
            launch(
                "tune",
                "--folds",
                "1",
                "--num-samples",
                "1",
                "--workers-per-trial",
                str(workers),
                "--output-dir",
                str(tmp_path / f"job{workers}"),
                *tiny,
                "train.epochs=1",
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for workers in (1, 2)
        ]
        for job in jobs:
            out, _ = job.communicate(timeout=500)
            assert job.returncode == 0, out[-3000:]
            assert "joining the Ray already running here at" in out
            assert "Nested leave-one-session-out (nested-loso)" in out
    finally:  # that Ray's processes only (`ray stop` would stop every Ray of the machine)
        for process in psutil.process_iter(["cmdline"]):
            if str(ray_tmp) in " ".join(process.info["cmdline"] or []):
                process.kill()


def test_a_cluster_without_the_driver_resource_is_one_line_and_leaves_the_folder_free(
    tiny, tmp_path, capsys
):
    ray.shutdown()  # the shared Ray has the resource; this test's Ray (as a user's may) has not
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        out = tmp_path / "out"
        job = ["--folds", "1", "--output-dir", str(out), *tiny]
        assert main(["tune", "--workers-per-trial", "2", *job]) == 2
        assert "has no 'train_driver' resource" in capsys.readouterr().err
        assert not (out / "config.yaml").exists()  # the same command may run again
        # Ray's loggers are as they were: nothing of this process logs to the job's ray.log
        handlers = [h for name in RAY_LOGGERS for h in logging.getLogger(name).handlers]
        assert str(out / "ray.log") not in [getattr(h, "baseFilename", "") for h in handlers]
    finally:
        ray.shutdown()  # the next test starts the shared one again
