"""The main job (`turbo-ray tune`) end to end: Optuna + ASHA per search, reproduced, resumed
from its config alone, resumed finished, its driver killed mid-search and resumed (in its own
process with its own Ray, as a user runs it), beside a `ray start` Ray."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import ray
import yaml
from conftest import run_main
from matplotlib.image import imread

from turbo_ray.cli import main
from turbo_ray.config import MODES
from turbo_ray.errors import SearchSpaceError
from turbo_ray.progress import RAY_LOGGERS
from turbo_ray.search_space import load_search_space
from turbo_ray.searchers import NestedSearch
from turbo_ray.trials import SearchKey

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
        ("model.preset: {choice: [tiny, huge]}", "model.preset must be one of"),
        ("loss.mode: {choice: [baseline, turbo]}", "loss.mode is not searched: each search runs"),
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


def test_each_mode_searches_only_the_parameters_it_reads(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "loss.temperature: {loguniform: [0.02, 0.5]}\nloss.w_in: {uniform: [0.0, 1.0]}\n"
        "loss.w_cross: {uniform: [0.0, 1.0]}\ntrain.lr: {loguniform: [1.0e-4, 3.0e-3]}\n"
        "start: [{loss.temperature: 0.07, train.lr: 1.0e-3}, {loss.w_cross: 0.5}]\n"
    )
    space = load_search_space(path)
    searched = {m: [p.key for p in space.for_mode(m).params] for m in MODES}
    assert searched == {
        "baseline": ["train.lr"],
        "in": ["loss.temperature", "loss.w_in", "train.lr"],
        "cross": ["loss.temperature", "loss.w_cross", "train.lr"],
        "turbo": ["loss.temperature", "loss.w_in", "loss.w_cross", "train.lr"],
    }
    # start points keep what the mode reads; one left with nothing is dropped
    assert space.for_mode("baseline").start == [{"train.lr": 1.0e-3}]
    assert space.for_mode("cross").start == space.start
    path.write_text("loss.temperature: {loguniform: [0.02, 0.5]}\n")
    with pytest.raises(SearchSpaceError, match="loss.mode=baseline reads none of the searched"):
        load_search_space(path).for_mode("baseline")


def test_cli_reports_a_bad_search_space_before_starting_anything(tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text("loss.temperature: {uniform: [0.1]}\n")
    assert main(["tune", "--search-space", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    assert f"{path}: loss.temperature: uniform needs [low, high]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_nested_comparison_keeps_test_sessions_out_gives_equal_budgets_and_survives_a_kill(
    demo_corpus, tiny, launch, run_command, mlflow_store_matches, tmp_path
):
    # baseline and turbo, seeds 0 and 1, fold 1: four searches of one trial each, one at a time;
    # the driver and its local Ray are killed mid-search, `--resume` with the same command ends
    # the job
    space = tmp_path / "space.yaml"
    space.write_text(
        "train.lr: {loguniform: [1.0e-4, 3.0e-3]}\n"
        "loss.temperature: {loguniform: [0.05, 0.2]}\n"
        "start: [{train.lr: 2.0e-3, loss.temperature: 0.1}]\n"
    )
    out = tmp_path / "exp"
    command = [
        "tune",
        "--output-dir",
        str(out),
        "--search-space",
        str(space),
        "--modes",
        "baseline,turbo",
        "--seeds",
        "0,1",
        "--num-samples",
        "1",
        "--folds",
        "1",
        "--num-workers",
        "1",
        "--max-concurrent-trials",
        "1",
        *tiny,
        "train.num_to_keep=2",
    ]
    # Tune saves its experiment's state (which trials ended, their checkpoints) at most every
    # 10 s by default; every second here, so that the kill below finds it saved
    saving = {"TUNE_GLOBAL_CHECKPOINT_S": "1"}
    with open(tmp_path / "first.log", "w") as log:  # the driver keeps its own handle
        driver = launch(
            *command, env=saving, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    deadline = time.time() + 420
    # two searches done, the third's trial has its first checkpoint, all in Tune's saved state:
    # kill it mid-trial
    while saved_trials(out / "search") != {"TERMINATED": 2, "checkpointed": 1}:
        assert time.time() < deadline and driver.poll() is None, (
            tmp_path / "first.log"
        ).read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its local Ray die at once
    driver.wait()

    resumed = run_command(*command, "--resume")
    assert "(resumed)" in resumed and "no problems" in resumed  # the corpus report
    assert "Nested leave-one-session-out (nested-loso, 1 of its 5 folds)" in resumed
    assert "4 searches: modes baseline,turbo x seeds 0,1 x folds, equal budgets" in resumed
    # no finished trial started again; the interrupted one went on, the last one started
    first = (tmp_path / "first.log").read_text()
    assert "baseline seed 0 fold 1 trial 0  started   lr=0.002\n" in first  # no temperature
    assert "baseline seed 1 fold 1 trial 0  started" in first
    assert "baseline seed" not in resumed.split("Selected per fold")[0]
    assert "turbo seed 0 fold 1 trial 0  epoch 2/2" in resumed
    assert "turbo seed 1 fold 1 trial 0  started   lr=0.002  temperature=0.1\n" in resumed
    # Tune's record of every trial: no epoch twice (nothing trained again)
    records = list((out / "search").glob("trial-*/result.json"))
    assert len(records) >= 4
    for record in records:
        epochs = [json.loads(line)["epoch"] for line in record.read_text().splitlines()]
        assert epochs == sorted(set(epochs)), (record, epochs)

    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == "nested-loso"
    folds = pd.DataFrame(results["folds"])
    assert sorted(zip(folds["mode"], folds.seed)) == [
        ("baseline", 0),
        ("baseline", 1),
        ("turbo", 0),
        ("turbo", 1),
    ]
    assert results["search"]["searched_per_mode"] == {
        "baseline": ["train.lr"],
        "turbo": ["train.lr", "loss.temperature"],
    }
    for fold in results["folds"]:
        assert fold["test_session"] == 1 and fold["search_sessions"] == [2, 3, 4, 5]
        searched = {"baseline": {"train.lr"}, "turbo": {"train.lr", "loss.temperature"}}
        assert set(fold["params"]) == searched[fold["mode"]] and 1 <= fold["best_epoch"] <= 2
        assert {"trial", "val_ua", "wa", "ua", "f1", "confusion"} <= set(fold)
    # the finished job kept only the weights of each search's selected checkpoint
    kept = sorted(str(c.relative_to(out)) for c in out.glob("search/trial-*/checkpoint_*"))
    assert kept == sorted(fold["checkpoint"] for fold in results["folds"])  # relative to the job
    assert all(
        sorted(f.name for f in (out / c).iterdir()) == ["meta.json", "model.pt"] for c in kept
    )
    # equal budgets: every search ran the same number of trials; the baseline's configs hold no
    # searched temperature (its trials ran the config's, unused)
    trials = pd.read_csv(out / "trials.csv", dtype={"trial": str})
    assert trials.groupby(["mode", "seed", "fold"]).size().tolist() == [1, 1, 1, 1]
    assert trials.error.isna().all()
    assert trials[trials["mode"] == "baseline"]["loss.temperature"].isna().all()
    assert trials[trials["mode"] == "turbo"]["loss.temperature"].notna().all()
    for trial in trials.trial:
        params = json.loads((out / "search" / f"trial-{trial}" / "params.json").read_text())
        assert ("loss.temperature" in params) == (params["loss.mode"] == "turbo")

    # the paired comparison: printed, in comparison.csv and results.json, the same numbers
    table = pd.read_csv(out / "comparison.csv")
    assert results["comparison"] == json.loads(table.to_json(orient="records"))
    ua = folds.pivot(index="seed", columns="mode", values="ua")
    (row,) = table[table.score == "ua"].itertuples(index=False)
    assert (row.mode, row.folds, row.pairs) == ("turbo", 1, 2)
    assert row.difference == pytest.approx((ua.turbo - ua.baseline).mean())
    assert (
        "Paired comparison with the baseline (nested-loso, a search per mode and fold, "
        "1 trial each, 2 epochs; seeds 0,1; 1 fold)" in resumed
    )
    assert f"difference {100 * row.difference:+6.2f}" in resumed
    # the figures: a panel per search (4 searches of one fold: a column of 4), drawn
    for name in ("optimization_history.png", "ua_per_epoch.png"):
        height, width = drawn(out / name).shape[:2]
        assert height > 2 * width, (name, height, width)
    height, width = drawn(out / "confusion.png").shape[:2]
    assert width > 1.5 * height  # a panel per mode, side by side
    drawn(out / "comparison.png")
    # each search's selected config, runnable: its mode, seed and searched parameters
    (selected,) = [f for f in results["folds"] if (f["mode"], f["seed"]) == ("baseline", 1)]
    config = yaml.safe_load((out / "best_config_baseline-seed1-s1.yaml").read_text())
    assert (config["loss"]["mode"], config["train"]["seed"]) == ("baseline", 1)
    # re-run as its header says (`train --config FILE --fold K`), it trains that one run
    assert [config["tune"][k] for k in ("modes", "seeds", "folds", "final")] == [None] * 3 + [False]
    assert config["train"]["lr"] == pytest.approx(selected["params"]["train.lr"])

    # what every trial trained and validated on: never its fold's test session, no validation
    # speaker in training
    manifest = demo_corpus.manifest.set_index("utterance_id")
    # (a trial the killed driver had started but Tune had not yet saved is re-proposed under a new
    # id: its record stays, and is checked too)
    seen = (out / "search").glob("trial-*/utterances.json")
    records = [json.loads(p.read_text()) for p in seen]
    assert {r["fold"] for r in records} == {1} and len(records) >= 4
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

    # each search's TPE was told its trials' best epoch (the score that selects), not the last one
    keys = [SearchKey(m, s, 1) for m in ("baseline", "turbo") for s in (0, 1)]
    searcher = NestedSearch(keys, load_search_space(space), 1, "best_val_ua")
    searcher.restore_from_dir(str(out / "search"))
    for (mode, seed, fold), optuna_search in searcher.searchers.items():
        told = [t.value for t in optuna_search._ot_study.trials]
        own = (trials["mode"] == mode) & (trials.seed == seed) & (trials.fold == fold)
        assert told == pytest.approx(trials[own].best_val_ua.tolist())


def saved_trials(search: Path) -> dict[str, int]:
    """What Tune's last saved state of an experiment holds: how many trials ended, and how many
    of the others have reported an epoch (each epoch reports its checkpoint)."""
    states = sorted(search.glob("experiment_state-*.json"))
    try:
        saved = json.loads(states[-1].read_text())["trial_data"] if states else []
    except json.JSONDecodeError:  # being written
        return {}
    trials = [(json.loads(trial), json.loads(run)) for trial, run in saved]
    ended = sum(trial["status"] == "TERMINATED" for trial, _ in trials)
    checkpointed = sum(
        trial["status"] != "TERMINATED" and run["last_result"].get("epoch", 0) >= 1
        for trial, run in trials
    )
    return {"TERMINATED": ended, "checkpointed": checkpointed}


def drawn(png: Path) -> np.ndarray:
    """A figure's pixels (height, width, RGBA); it must not be blank."""
    pixels = imread(png)
    assert pixels.std() > 0, f"{png} is blank"
    return pixels


def test_the_main_job_reproduces_resumes_from_its_config_alone_and_resumes_finished(
    main_job, mlflow_store_matches, tmp_path
):
    fresh, printed, overrides = main_job
    # a job killed after it saved its config, before Tune first saved its own state, resumes,
    # and ends as the uninterrupted job did
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "config.yaml").write_text(run_main("config", *overrides))
    run_main("tune", "--output-dir", str(killed), "--resume")

    def selection(out):
        results = json.loads((out / "results.json").read_text())
        trials = pd.read_csv(out / "trials.csv", dtype={"trial": str}).drop(columns=["trial"])
        drop = ("trial", "checkpoint")
        return [{k: v for k, v in f.items() if k not in drop} for f in results["folds"]], trials

    (killed_folds, killed_trials), (folds, trials) = selection(killed), selection(fresh)
    assert [f["test_session"] for f in folds] == [1, 2]  # the final search is not tested
    # two of the corpus's five folds: the title and results.json say so
    assert "Nested leave-one-session-out (nested-loso, 2 of its 5 folds)" in printed
    assert json.loads((fresh / "results.json").read_text())["outer_folds"]["run"] == [1, 2]
    assert killed_folds == folds  # the same selections and test scores
    pd.testing.assert_frame_equal(killed_trials, trials)  # the same proposals, the same stops
    assert sorted(trials.fold) == [0, 0, 1, 1, 2, 2]  # 2 trials per search, the final's too
    results = json.loads((fresh / "results.json").read_text())
    seeds = {"turbo-seed0-s1": 1, "turbo-seed0-s2": 2, "turbo-seed0-s0": 0}
    assert results["search"]["sampler_seeds"] == seeds
    assert "train.lr" in results["search"]["space"]

    # resuming the finished job trains nothing and prints the same tables
    records = {p: p.read_text() for p in fresh.glob("search/trial-*/result.json")}
    kept = sorted(fresh.glob("search/trial-*/checkpoint_*"))
    again = run_main("tune", "--output-dir", str(fresh), "--resume")
    assert " started " not in again and "(resumed)" in again
    tables = printed[printed.index("Selected per fold") : printed.index("wrote ")]
    assert tables in again
    assert {p: p.read_text() for p in fresh.glob("search/trial-*/result.json")} == records
    assert sorted(fresh.glob("search/trial-*/checkpoint_*")) == kept
    mlflow_store_matches(fresh, tmp_path)
    header = (fresh / "best_config_turbo-seed0-s2.yaml").read_text().splitlines()[1]
    assert header.endswith(f"--config {fresh / 'best_config_turbo-seed0-s2.yaml'} --fold 2")


def test_a_finished_job_moved_elsewhere_resumes_keeping_its_checkpoints(main_job, tmp_path):
    fresh, printed, _ = main_job
    moved = tmp_path / "moved"
    shutil.copytree(fresh, moved)  # another disk, another mount point
    again = run_main("tune", "--output-dir", str(moved), "--resume")

    def tables(out: str, folder: Path) -> str:
        return out.split("Selected per fold")[1].split("wrote")[0].replace(str(folder), "JOB")

    assert not re.search(r"trial \d+  started", again)  # trains nothing
    assert tables(again, moved) == tables(printed, fresh)  # the same selections and scores
    results = json.loads((moved / "results.json").read_text())
    for fold in results["folds"]:  # relative to the job: still there, and exported from there
        assert (moved / fold["checkpoint"] / "model.pt").is_file()
    model = tmp_path / "model"
    assert run_main("export", str(moved / results["folds"][0]["checkpoint"]), str(model))
    assert (model / "turbo_ray.json").is_file()


def test_a_finished_job_lists_its_failed_trial_and_its_resume_trains_nothing(
    shared_ray, tiny, run_command, tmp_path
):
    out = tmp_path / "job"
    command = ["tune", "--output-dir", str(out), *tiny, "tune.folds=1", "tune.num_samples=2"]
    joined = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    # trial 1 fails for good (no retries by default); the job ends on trial 0
    printed = run_command("tests/perturbed_trials.py", "fail", "1", *command, env=joined)
    caveat = "Not comparable with another run of this config: turbo seed 0 fold 1 trial 1 ("
    assert caveat in printed
    (failed,) = json.loads((out / "results.json").read_text())["search"]["failed_trials"]
    assert (failed["search"], failed["fold_trial"]) == ("turbo seed 0 fold 1", 1)
    # resumed: its searches have ended, so the failed trial is listed again, not retried
    again = run_main(*command, "--resume")
    assert "started" not in again and caveat in again
    trials = pd.read_csv(out / "trials.csv", keep_default_na=False)
    assert trials.error.tolist()[1] != "" and trials.epochs.tolist() == [2, 0]


def search_outcome(out: Path) -> tuple[list, dict]:
    """What a search's trials were and what the job selected and scored, without what names the
    run (Tune's trial ids, checkpoint paths) or sets how many trials ran at once."""
    trials = pd.read_csv(out / "trials.csv", keep_default_na=False).drop(columns="trial")
    results = json.loads((out / "results.json").read_text())
    for fold in results["folds"]:
        del fold["trial"], fold["checkpoint"]
    del results["config"]["tune"]["max_concurrent_trials"]
    return trials.to_dict("records"), results


def test_a_search_of_two_trials_at_once_gives_the_same_trials_one_at_a_time_slowed_and_killed(
    shared_ray, tiny, launch, tmp_path
):
    # one search, 4 trials, 2 at once (trial i from trials 0..i-2; at a rung, trial i waits for
    # trials 0..i-1), 2 epochs with an ASHA rung at 1: run one at a time; then four at once with
    # trial 0 slowed down (trial 1 reaches the rung first and waits there), the driver killed
    # mid-search and the job resumed
    space = tmp_path / "space.yaml"
    space.write_text(
        "train.lr: {loguniform: [1.0e-4, 3.0e-3]}\nmodel.dropout: {uniform: [0.05, 0.3]}\n"
    )
    args = [
        *tiny,
        "tune.folds=1",
        "tune.num_samples=4",
        "tune.trials_at_once=2",
        "tune.grace_period=1",
        "tune.reduction_factor=2",
        f"tune.search_space={space}",
    ]
    one = tmp_path / "one-at-a-time"
    assert "resumed after" not in run_main(
        "tune", "--output-dir", str(one), *args, "tune.max_concurrent_trials=1"
    )

    killed = tmp_path / "slowed-and-killed"
    command = ["tune", "--output-dir", str(killed), *args, "tune.max_concurrent_trials=4"]
    joined = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        driver = launch(
            "tests/perturbed_trials.py", "slow", "0", *command, env=joined, stdout=out, stderr=out
        )
    deadline = time.time() + 300
    while saved_trials(killed / "search").get("TERMINATED", 0) < 1:  # trial 0 ended: mid-search
        assert time.time() < deadline and driver.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    driver.kill()
    driver.wait()
    # trial 1 reached epoch 1 (the rung) before trial 0 and waited there for it
    lines = [line.split("  val")[0] for line in log.read_text().splitlines()]
    first = "turbo seed 0 fold 1 trial {}  epoch 1/2"
    assert lines.index(first.format(1)) < lines.index(first.format(0)), log.read_text()
    assert "(resumed)" in run_main(*command, "--resume")

    trials, results = search_outcome(one)
    assert trials[0]["epochs"] == 2 and any(t["stopped_early"] for t in trials)  # ASHA stopped
    assert results["search"]["trials_at_once"] == 2 and results["search"]["failed_trials"] == []
    assert search_outcome(killed) == (trials, results)


def test_a_job_joins_a_ray_started_by_ray_start_keeps_its_runs_in_a_bucket_and_resumes_from_it(
    shared_ray, s3, tiny, run_command, mlflow_store_matches, ray_tmp, tmp_path, monkeypatch
):
    # The way docs/watching.md keeps a dashboard: `ray start --head` first (its processes given the
    # bucket's credentials, as a cluster's nodes are); then a job without --address joins it,
    # while this test process holds a Ray of its own beside it. Its trial drives a two-worker
    # TorchTrainer (Train's placement-group cleaner looks for "the" local Ray), whose run lives
    # in the trial's folder in the bucket, beside the shards, Tune's state and the job's config.
    # Then the job's folder is deleted (another machine) and `--resume` finishes it from the
    # bucket alone.
    # As on a user's machine where a Ray token exists (any local Ray writes one): `ray start`
    # turns token auth on by itself, and the job, with no RAY_AUTH_MODE set, must send the token.
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    joined = ray_tmp("joined")
    env = s3.env | {"RAY_TMPDIR": str(joined)}
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
    assert "Token authentication is enabled" in started.stdout + started.stderr
    # a learning rate too small to change a prediction: every epoch scores the same and ties go
    # to the earlier epoch, so the job selects epoch 1 and prunes the run's last
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {loguniform: [1.0e-9, 2.0e-9]}\n")
    out, runs = tmp_path / "job", "joined/runs"
    command = ["tune", "--folds", "1", "--num-samples", "1", "--num-workers", "2"]
    command += ["--search-space", str(space), "--output-dir", str(out), *tiny]
    command += [f"data.shards_dir={s3.uri('joined/shards')}", f"train.storage_path={s3.uri(runs)}"]
    try:
        printed = run_command(*command, env=env)
        first = json.loads((out / "results.json").read_text())
        assert not (out / "search").exists()  # nothing of Ray's storage on the local disk
        stored = s3.keys(f"{runs}/job/")
        shutil.rmtree(out)  # another machine: only the bucket is left
        resumed = run_command(*command, "--resume", env=env)
    finally:  # that Ray's processes only (`ray stop` would stop every Ray of the machine)
        for process in psutil.process_iter(["cmdline"]):
            if str(joined) in " ".join(process.info["cmdline"] or []):
                process.kill()
    assert "joining the Ray already running here at" in printed
    assert "Nested leave-one-session-out (nested-loso, 1 of its 5 folds)" in printed
    (fold,) = first["folds"]
    assert fold["best_epoch"] == 1
    assert f"{runs}/job/config.yaml" in stored
    assert "joined/shards/_manifest.json" in s3.keys("joined/shards/")
    assert any(k.startswith(f"{runs}/job/search/experiment_state") for k in stored)  # Tune's
    # the TorchTrainer's run is the trial's folder; the job pruned every checkpoint but the
    # selected one (epoch 2's, the run's last, among them)
    (checkpoint,) = {m[1] for k in stored if (m := re.match(r"(.*/checkpoint_[^/]+)/", k))}
    assert checkpoint.startswith(f"{runs}/job/search/trial-")
    assert f"{checkpoint.rsplit('/', 1)[0]}/checkpoint_manager_snapshot.json" in stored
    assert checkpoint.endswith(f"/job/{fold['checkpoint']}")

    # resumed from the bucket: the same selection and test scores, nothing trained again, and
    # every trial's history in the new folder's MLflow store
    assert f"config fetched from {s3.uri(runs)}/job/config.yaml" in resumed
    assert "(resumed)" in resumed and " started " not in resumed
    assert json.loads((out / "results.json").read_text())["folds"] == first["folds"]
    checkpoints = {k for k in s3.keys(f"{runs}/job/search/") if "/checkpoint_" in k}
    assert checkpoints == {k for k in stored if "/checkpoint_" in k}
    mlflow_store_matches(out, tmp_path)


def test_a_cluster_without_the_driver_resource_is_one_line_and_leaves_the_folder_free(
    private_ray, tiny, tmp_path, capsys
):
    # the shared Ray has the resource; this Ray (as a user's may) has not
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    out = tmp_path / "out"
    job = ["--folds", "1", "--output-dir", str(out), *tiny]
    assert main(["tune", "--num-workers", "2", *job]) == 2
    assert "has no 'train_driver' resource" in capsys.readouterr().err
    assert not (out / "config.yaml").exists()  # the same command may run again
    # Ray's loggers are as they were: nothing of this process logs to the job's ray.log
    handlers = [h for name in RAY_LOGGERS for h in logging.getLogger(name).handlers]
    assert str(out / "ray.log") not in [getattr(h, "baseFilename", "") for h in handlers]
