"""The searcher and scheduler of the main job's searches: a search's trials (proposals, ASHA stops)
do not depend on how many run at once or in which order they report; one at a time, they are
Ray's ASHA's and Optuna's own; the rungs survive a restart. Driven as Tune drives them, on the
cluster of experiments/sim_search.py."""

import importlib.util
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from turbo_ray.config import load_config
from turbo_ray.search_space import load_search_space
from turbo_ray.searchers import LaunchOrderASHA, NestedASHA, NestedSearch, SchedulerState
from turbo_ray.trials import FOLD_TRIAL, SearchKey
from turbo_ray.tune import search_keys

REPO = Path(__file__).parents[1]
SPACE = load_search_space(REPO / "experiments/configs/search_space.yaml")


def simulator():
    spec = importlib.util.spec_from_file_location("sim_search", REPO / "experiments/sim_search.py")
    module = sys.modules["sim_search"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sim = simulator()


@pytest.mark.parametrize("max_t, grace, rf", [(20, 2, 3), (3, 1, 2), (9, 1, 3)])
def test_one_trial_at_a_time_stops_where_rays_asha_stops(max_t, grace, rf):
    rng = np.random.default_rng(max_t)
    ray_asha = ASHAScheduler(
        metric="m",
        mode="max",
        time_attr="epoch",
        max_t=max_t,
        grace_period=grace,
        reduction_factor=rf,
    )
    ours = LaunchOrderASHA(max_t, grace, rf)
    stops = []
    for index in range(30):
        trial = Trial("t", config={}, trial_id=str(index), stub=True)
        ray_asha.on_trial_add(None, trial)
        best = 0.0
        for epoch in range(1, max_t + 1):
            best = max(best, rng.random())
            theirs = ray_asha.on_trial_result(None, trial, {"epoch": epoch, "m": best})
            assert ours.report(index, epoch, best) == theirs, (index, epoch)
            if theirs == TrialScheduler.STOP:
                ours.end(index, epoch)
                stops.append(epoch)
                break
    assert min(stops) < max_t  # ASHA stopped some early: the comparison is not vacuous


def trials_of(cluster) -> list[tuple]:
    """What a search made of each trial: its search, launch order, parameters, epochs, best."""
    return sorted(
        (
            str(SearchKey.of(t.config)),
            t.config[FOLD_TRIAL],
            str(sorted(t.config.items())),
            t.epoch,
            t.best,
        )
        for t in cluster.trials
    )


@pytest.mark.parametrize("trials_at_once", [1, 2, 4])
def test_a_search_gives_the_same_trials_on_any_cluster(trials_at_once):
    cfg = load_config(
        None,
        ["tune.num_samples=8", "train.epochs=9", "tune.grace_period=1", "tune.reduction_factor=3"],
    )
    keys = search_keys(cfg, [1, 2, 3])
    runs = {}
    for gpus in (1, 3, 7, 40):
        cluster = sim.Cluster(cfg, keys, SPACE, gpus, trials_at_once, seed=0)
        cluster.run()
        runs[gpus] = cluster
    # the same trials, epochs and scores, though the order of reports differed
    assert len({str(trials_of(c)) for c in runs.values()}) == 1
    order = {
        g: [t.trial_id for t in sorted(c.trials, key=lambda t: t.epoch)] for g, c in runs.items()
    }
    assert len({str(o) for o in order.values()}) > 1
    if trials_at_once > 1:  # some trial waited at a rung on a wide cluster, none on one GPU
        assert runs[40].paused_time > 0 and runs[1].paused_time == 0
    stopped = [t for t in runs[40].trials if t.epoch < cfg.train.epochs]
    assert stopped  # ASHA stopped trials early


def test_trial_i_is_proposed_from_trials_up_to_i_minus_w_told_in_launch_order():
    key = SearchKey("turbo", 0, 1)
    searcher = NestedSearch([key], SPACE, 4, "best_val_ua", trials_at_once=2, max_concurrent=3)
    a, b = searcher.suggest("a"), searcher.suggest("b")
    assert (a[FOLD_TRIAL], b[FOLD_TRIAL]) == (0, 1)
    assert searcher.suggest("c") is None  # trial 2 waits for trial 0
    searcher.on_trial_complete("b", {"best_val_ua": 0.7})  # trial 1 ends first: held back
    assert searcher.suggest("c") is None
    searcher.on_trial_complete("a", {"best_val_ua": 0.5})
    study = searcher.searchers[key]._ot_study
    assert [t.value for t in study.trials] == [0.5, None]  # trial 2 is proposed from trial 0
    c = searcher.suggest("c")
    assert c[FOLD_TRIAL] == 2
    assert [t.value for t in study.trials] == [0.5, 0.7, None]  # trial 3 will know trial 1
    searcher.on_trial_complete("c", {"best_val_ua": 0.6})
    searcher.suggest("d")
    assert [t.value for t in study.trials] == [0.5, 0.7, 0.6, None]
    assert searcher.suggest("e") == NestedSearch.FINISHED
    searcher.on_trial_complete("d", {"best_val_ua": 0.1})
    assert [t.value for t in study.trials] == [0.5, 0.7, 0.6, 0.1]  # all told in the end


def test_the_job_runs_at_most_max_concurrent_trials():
    keys = [SearchKey("turbo", 0, 1), SearchKey("turbo", 0, 2)]
    searcher = NestedSearch(keys, SPACE, 4, "best_val_ua", trials_at_once=4, max_concurrent=3)
    proposed = [searcher.suggest(str(i)) for i in range(3)]
    assert [SearchKey.of(p) for p in proposed] == [keys[0], keys[1], keys[0]]  # least searched
    assert searcher.suggest("3") is None
    searcher.on_trial_complete("1", {"best_val_ua": 0.5})
    assert SearchKey.of(searcher.suggest("3")) == keys[1]


def test_asha_is_per_search_waits_for_earlier_trials_and_keeps_its_state_across_a_restart():
    cfg = load_config(None, ["train.epochs=4", "tune.grace_period=1", "tune.reduction_factor=2"])
    one, other = SearchKey("turbo", 0, 1), SearchKey("turbo", 0, 2)

    def scheduler():
        return NestedASHA([one, other], "best_val_ua", 4, 1, 2)

    cluster = sim.Cluster(cfg, [one, other], SPACE, gpus=4, trials_at_once=2, seed=0)
    first = cluster.scheduler = scheduler()

    def trial(name, key, index):
        t = sim.SimTrial(name, key.config() | {FOLD_TRIAL: index}, speed=1.0)
        cluster.trials.append(t)
        first.on_trial_add(cluster, t)
        t.status = Trial.RUNNING
        return t

    def report(sched, t, epoch, score):
        t.last_result = {"epoch": epoch, "best_val_ua": score}
        return sched.on_trial_result(cluster, t, t.last_result)

    a, b, c = trial("a", one, 0), trial("b", one, 1), trial("c", other, 0)
    # b reaches the first rung before a: it pauses there until a has
    assert report(first, b, 1, 0.3) == TrialScheduler.PAUSE
    b.status = Trial.PAUSED
    # the other search has its own rungs: its first trial is not measured against this one's
    assert report(first, c, 1, 0.2) == TrialScheduler.CONTINUE
    # Tune saves its callbacks' states with the experiment (pickled); the driver dies; the restored
    # callback hands the rungs and the waiting trial to the new scheduler; Tune restores b as
    # PENDING, which the scheduler keeps paused
    saved = pickle.dumps(SchedulerState(first).get_state())
    again = cluster.scheduler = scheduler()
    SchedulerState(again).set_state(pickle.loads(saved))
    b.status = Trial.PENDING
    assert again.choose_trial_to_run(cluster) is None and b.status == Trial.PAUSED
    assert report(again, a, 1, 0.9) == TrialScheduler.CONTINUE
    # a passed the rung: b is decided (0.3 < 0.9: stopped) and stopped by the scheduler
    assert again.choose_trial_to_run(cluster) is None
    assert b.status == Trial.TERMINATED and cluster.searcher.ended == {}  # b was never proposed
    d = trial("d", one, 2)
    assert report(again, d, 1, 0.95) == TrialScheduler.CONTINUE  # a and b passed: no wait
    fresh = scheduler()  # without the saved state, d would be the first at the rung
    assert fresh.ashas[one].report(2, 1, 0.1) == TrialScheduler.PAUSE
