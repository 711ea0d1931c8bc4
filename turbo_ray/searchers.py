"""The job's search algorithms: for every search (loss mode, training seed, outer fold) an Optuna
TPE proposes and an ASHA stops early, both in launch order, so that a search gives the same trials
whatever the cluster runs at once and whichever trial reports first.

    searcher = NestedSearch(keys, space, trials_per_search=16, metric="best_val_ua",
                            trials_at_once=4, max_concurrent=20)
    scheduler = NestedASHA(keys, metric="best_val_ua", max_t=20, grace_period=2,
                           reduction_factor=3)

With W trials at once per search, trial i is proposed from the results of its search's trials
0 … i−W, told in launch order; the W−1 still running are passed to TPE as poor results (Optuna's
constant liar), so trial i starts once trial i−W has ended. At an ASHA rung, trial i is compared
with its search's trials 0 … i−1 at that rung; one of them still short of the rung makes trial i
pause there (its checkpoint saved, its GPU free) until it has reached the rung or ended.
W = 1 is a search run one trial at a time: every earlier trial has ended, nothing waits.
"""

from __future__ import annotations

import copy
import pickle
import tempfile
from pathlib import Path

import numpy as np
import optuna
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from turbo_ray.search_space import SearchSpace
from turbo_ray.trials import FOLD_TRIAL, SearchKey

CONTINUE, PAUSE, STOP = TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP


class NestedSearch(Searcher):
    """One TPE per `SearchKey`, all in one Tune experiment, so that the searches share the
    cluster; each tunes what its mode reads (`SearchSpace.for_mode`) with the same number of
    trials. A search keeps up to `trials_at_once` trials running (module docstring), the job up to
    `max_concurrent` (0: no limit). Each new trial goes to the ready search with the fewest trials
    so far; its config carries its search (`SearchKey.config`: the outer fold it must never
    see among them) and `fold_trial`, its launch order in the search."""

    def __init__(
        self,
        keys: list[SearchKey],
        space: SearchSpace,
        trials_per_search: int,
        metric: str,
        trials_at_once: int = 1,
        max_concurrent: int = 0,
    ):
        super().__init__(metric=metric, mode="max")
        self.trials_per_search, self.trials_at_once = trials_per_search, trials_at_once
        self.max_concurrent = max_concurrent
        self.searchers = {key: _tpe(space.for_mode(key.mode), key, metric) for key in keys}
        self.launched: dict[SearchKey, list[str]] = {key: [] for key in keys}  # in launch order
        self.ended: dict[str, float | None] = {}  # trial → its best score (None: failed)
        self.best_so_far: dict[str, float] = {}  # running trials
        self.told: set[str] = set()  # ended trials passed to their TPE (or skipped: failed)

    def suggest(self, trial_id: str) -> dict | str | None:
        running = [t for ids in self.launched.values() for t in ids if t not in self.ended]
        if self.max_concurrent and len(running) >= self.max_concurrent:
            return None  # asked again when a trial ends
        unfinished = [k for k, ids in self.launched.items() if len(ids) < self.trials_per_search]
        if not unfinished:
            return Searcher.FINISHED
        ready = [k for k in unfinished if all(t in self.ended for t in self._tellable(k))]
        if not ready:
            return None
        key = min(ready, key=lambda k: len(self.launched[k]))  # the first of the least searched
        self._tell(key)
        params = self.searchers[key].suggest(trial_id)
        if not isinstance(params, dict):
            return params
        self.launched[key].append(trial_id)
        self._tell(key)  # what the next proposal may know is known now
        return params | key.config() | {FOLD_TRIAL: len(self.launched[key]) - 1}

    def _tellable(self, key: SearchKey) -> list[str]:
        """The trials whose results the search's next proposal is made from: 0 … i−W for trial
        i; all of them once every trial is launched."""
        ids = self.launched[key]
        if len(ids) == self.trials_per_search:
            return ids
        return ids[: max(0, len(ids) - self.trials_at_once + 1)]

    def _tell(self, key: SearchKey) -> None:
        """Pass the ended trials among `_tellable` to the search's TPE, in launch order."""
        for t in self._tellable(key):
            if t not in self.ended:
                break  # the last proposal is made: later results wait for this one
            if t not in self.told:
                self.told.add(t)
                if self.ended[t] is not None:
                    self.searchers[key].on_trial_complete(t, {self.metric: self.ended[t]})

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            self.best_so_far[trial_id] = result[self.metric]

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """A finished or stopped trial's best score (a trial stopped while paused reports none:
        its last reported one) is held until its TPE may be told. A failed trial ends without a
        score; if a resumed run completes it, its score is told at once."""
        key = next((k for k, ids in self.launched.items() if trial_id in ids), None)
        if key is None:
            return  # Tune's restored state holds a trial that this searcher's saved state lacks
        score = None if error else (result or {}).get(self.metric, self.best_so_far.get(trial_id))
        late = trial_id in self.told and self.ended.get(trial_id) is None and score is not None
        self.ended[trial_id] = score
        self.best_so_far.pop(trial_id, None)
        if late:
            self.searchers[key].on_trial_complete(trial_id, {self.metric: score})
        self._tell(key)

    def save(self, checkpoint_path: str) -> None:
        states = {}
        with tempfile.TemporaryDirectory() as tmp:
            for i, (key, searcher) in enumerate(self.searchers.items()):
                searcher.save(f"{tmp}/{i}")
                states[key] = Path(f"{tmp}/{i}").read_bytes()
        state = {k: v for k, v in vars(self).items() if k != "searchers"} | {"states": states}
        Path(checkpoint_path).write_bytes(pickle.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        saved = pickle.loads(Path(checkpoint_path).read_bytes())
        with tempfile.TemporaryDirectory() as tmp:
            for i, (key, state) in enumerate(saved.pop("states").items()):
                Path(f"{tmp}/{i}").write_bytes(state)
                self.searchers[key].restore(f"{tmp}/{i}")
        vars(self).update(saved)


def _tpe(space: SearchSpace, key: SearchKey, metric: str) -> OptunaSearch:
    """One search's TPE over `space`, seeded by `sampler_seed`, evaluating its start points
    first; running trials count as poor results (constant liar: no effect with one at a
    time)."""
    sampler = optuna.samplers.TPESampler(seed=sampler_seed(key.seed, key.fold), constant_liar=True)
    return OptunaSearch(
        space=OptunaSearch.convert_search_space({p.key: p.domain() for p in space.params}),
        metric=metric,
        mode="max",
        sampler=sampler,
        points_to_evaluate=copy.deepcopy(space.start) or None,
    )


def sampler_seed(seed: int, fold: int) -> int:
    """The seed of the TPE sampler of a search (`results.json` records it): distinct for every
    training seed and fold (< 1000), shared by the modes of one seed and fold."""
    return 1000 * seed + fold


class LaunchOrderASHA:
    """One search's asynchronous successive halving, decided in launch order: at a rung (Ray's
    ASHA rungs: grace_period × reduction_factor^k below max_t) a trial is stopped if its score is
    below the (1 − 1/reduction_factor) quantile of its earlier trials' scores there, and decided
    only once every earlier trial has reached the rung or ended. Trials are their
    launch order in the search."""

    def __init__(self, max_t: int, grace_period: int, reduction_factor: int):
        self.max_t, self.reduction_factor = max_t, reduction_factor
        rungs = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
        self.scores = {grace_period * reduction_factor**k: {} for k in range(rungs)}
        self.stopped: dict[int, int] = {}  # trial → the rung that stopped it
        self.ended: dict[int, int] = {}  # trial → the last epoch it reached
        self.waiting: dict[int, tuple[int, float]] = {}  # trial → (rung, score) to decide

    def report(self, trial: int, epoch: int, score: float) -> str:
        """CONTINUE, STOP, or PAUSE: wait at this rung for the earlier trials."""
        if epoch >= self.max_t:
            return STOP  # its last epoch
        if epoch not in self.scores:
            return CONTINUE
        if trial in self.scores[epoch]:  # decided before: a restarted trial reports it again
            return STOP if self.stopped.get(trial) == epoch else CONTINUE
        if not self._ready(trial, epoch):
            self.waiting[trial] = (epoch, score)
            return PAUSE
        return self._decide(trial, epoch, score)

    def end(self, trial: int, epoch: int) -> None:
        """A trial finished, was stopped or failed at `epoch`."""
        self.ended[trial] = epoch
        self.waiting.pop(trial, None)

    def restart(self, trial: int) -> None:
        """A trial runs again (a failed one in a resumed job)."""
        self.ended.pop(trial, None)

    def release(self) -> None:
        """Decide the waiting trials whose earlier trials have all passed their rung."""
        for trial in sorted(self.waiting):
            rung, score = self.waiting[trial]
            if self._ready(trial, rung):
                del self.waiting[trial]
                self._decide(trial, rung, score)

    def _ready(self, trial: int, rung: int) -> bool:
        return all(j in self.scores[rung] or j in self.ended for j in range(trial))

    def _decide(self, trial: int, rung: int, score: float) -> str:
        earlier = [s for j, s in self.scores[rung].items() if j < trial]
        self.scores[rung][trial] = score
        quantile = (1 - 1 / self.reduction_factor) * 100
        if earlier and score < np.nanpercentile(earlier, quantile):
            self.stopped[trial] = rung
            return STOP
        return CONTINUE


class NestedASHA(FIFOScheduler):
    """A `LaunchOrderASHA` per search: a trial competes only with its own search's earlier trials.
    A trial paused at a rung resumes (from its checkpoint there) or is stopped once its rung is
    decided; Tune asks `choose_trial_to_run` every step, which carries the decisions out."""

    def __init__(
        self,
        keys: list[SearchKey],
        metric: str,
        max_t: int,
        grace_period: int,
        reduction_factor: int,
    ):
        super().__init__()
        self.score = metric
        self.ashas = {key: LaunchOrderASHA(max_t, grace_period, reduction_factor) for key in keys}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # its metric is its own (the score that selects)

    def _asha(self, trial: Trial) -> tuple[LaunchOrderASHA, int]:
        return self.ashas[SearchKey.of(trial.config)], trial.config[FOLD_TRIAL]

    def on_trial_add(self, tune_controller, trial):
        if trial.status == Trial.PENDING:  # new, or restored to run again
            asha, index = self._asha(trial)
            asha.restart(index)

    def on_trial_result(self, tune_controller, trial, result):
        if "epoch" not in result or self.score not in result:
            return CONTINUE
        asha, index = self._asha(trial)
        decision = asha.report(index, result["epoch"], result[self.score])
        asha.release()  # its score at a rung may be what later trials wait for
        return decision

    def on_trial_complete(self, tune_controller, trial, result):
        self._ended(trial)

    def on_trial_error(self, tune_controller, trial):
        self._ended(trial)

    def on_trial_remove(self, tune_controller, trial):
        self._ended(trial)

    def _ended(self, trial: Trial) -> None:
        asha, index = self._asha(trial)
        asha.end(index, (trial.last_result or {}).get("epoch", 0))
        asha.release()

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        """Carries out the decided rungs: a trial stopped at its rung ends, one allowed past it
        runs first. A restored trial still waiting stays paused (Tune would start it)."""
        released = []
        for trial in list(tune_controller.get_trials()):
            asha, index = self._asha(trial)
            held = index in asha.waiting or index in asha.stopped
            if trial.status == Trial.PENDING and held:
                tune_controller._set_trial_status(trial, Trial.PAUSED)
            if trial.status == Trial.PAUSED and index in asha.stopped:
                tune_controller.stop_trial(trial)
            elif trial.status == Trial.PAUSED and not held:
                released.append(trial)
        pending = [t for t in tune_controller.get_trials() if t.status == Trial.PENDING]
        return next(iter(released + pending), None)

    def debug_string(self) -> str:
        return "\n".join(f"{key}: waiting {a.waiting}" for key, a in self.ashas.items())


class SchedulerState(Callback):
    """Keeps a `NestedASHA`'s rungs (and the trials waiting at them) in Tune's own experiment
    state. `Tuner.restore` brings back the trials, the searcher and the callbacks' states, not the
    scheduler's; Tune saves this callback's state with its own, wherever the experiment is stored
    (an `s3://` storage path too), and restores it before the restored trials are added, so a
    resumed driver, on any machine, continues every search's ASHA where it stopped."""

    def __init__(self, scheduler: NestedASHA):
        self.scheduler = scheduler  # the same object as the Tuner's (one pickle holds both)

    def get_state(self) -> dict:
        return {k: vars(a) for k, a in self.scheduler.ashas.items()}

    def set_state(self, state: dict) -> None:
        for k, saved in state.items():
            vars(self.scheduler.ashas[k]).update(saved)
