"""The main job's search on a cluster of G GPUs, in virtual time, for W trials at once per search.

    python experiments/sim_search.py                 # the iemocap.yaml search, G 5..80, W 1..8
    python experiments/sim_search.py --quick         # checks that it runs, not a measurement

It drives the objects `turbo-ray tune` hands to Ray Tune, `turbo_ray.searchers.NestedSearch` (a TPE
per search) and `NestedASHA` (an ASHA per search, in launch order), through the calls Tune makes,
and models the rest. What it assumes:
- a trial is one worker on one GPU; `tune.max_concurrent_trials` = G; nothing else runs;
- an epoch takes 1 time unit times the trial's speed: lognormal (σ 0.1) per trial, and one trial in
  20 a straggler (twice as slow); starting a trial, or restarting one paused at a rung from its
  checkpoint there, takes 0.05 units;
- Tune's loop: whenever a GPU is free, the scheduler's `choose_trial_to_run` (a paused trial allowed
  past its rung), else the searcher's next trial; results are handled in the order they arrive;
- the objective: a synthetic validation score q(params) · (1 − exp(−epoch / r(lr))) plus noise
  (σ 0.01, fixed per config and epoch), reported as its best so far, as a trial reports
  best_val_ua; q peaks at lr 6e-4, dropout 0.15, temperature 0.07, w_in 0.4, w_cross 0.5.
The regret of a W is what its selected configs lose in q against W = 1 on the same cluster and
seed (UA points, mean over the searches); W = 1's spread is the standard deviation of its mean
selected q over the seeds. The last line: the makespan of the best W on 20 GPUs (the fastest whose
regret is within that spread) over W = 1 on 5 GPUs.
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import zlib
from dataclasses import dataclass, field

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import optuna
from ray.tune.experiment import Trial

from turbo_ray.config import load_config
from turbo_ray.data.iemocap import SESSIONS
from turbo_ray.search_space import load_search_space
from turbo_ray.searchers import CONTINUE, PAUSE, STOP, NestedASHA, NestedSearch
from turbo_ray.trials import FOLD_TRIAL, SearchKey, searched
from turbo_ray.tune import search_keys

START_COST = 0.05  # time units to start a trial or restart a paused one
METRIC = "best_val_ua"


@dataclass(eq=False)
class SimTrial:
    """What the searcher and scheduler read of a Tune trial, and its simulated speed."""

    trial_id: str
    config: dict
    speed: float
    status: str = Trial.PENDING
    last_result: dict = field(default_factory=dict)
    epoch: int = 0
    best: float = -math.inf
    paused_at: float = 0.0


def quality(params: dict) -> float:
    """The synthetic objective's ceiling for a config (a validation UA in [0, 1])."""
    return (
        0.75
        - 0.06 * math.log10(params["train.lr"] / 6e-4) ** 2
        - 2.0 * (params.get("model.dropout", 0.15) - 0.15) ** 2
        - 0.05 * math.log10(params.get("loss.temperature", 0.07) / 0.07) ** 2
        - 0.04 * (params.get("loss.w_in", 0.4) - 0.4) ** 2
        - 0.04 * (params.get("loss.w_cross", 0.5) - 0.5) ** 2
    )


def score(params: dict, epoch: int, seed: int) -> float:
    """The validation score a config reaches after `epoch` epochs: slower with a small lr."""
    rate = 4.0 * (6e-4 / params["train.lr"]) ** 0.25
    noise = np.random.default_rng([seed, zlib.crc32(repr(sorted(params.items())).encode()), epoch])
    return quality(params) * (1 - math.exp(-epoch / rate)) + 0.01 * noise.standard_normal()


class Cluster:
    """Tune's controller, as far as the searcher and scheduler see it, on G GPUs in virtual time."""

    def __init__(self, cfg, keys, space, gpus: int, trials_at_once: int, seed: int):
        t = cfg.tune
        self.searcher = NestedSearch(keys, space, t.num_samples, METRIC, trials_at_once, gpus)
        self.scheduler = NestedASHA(
            keys, METRIC, cfg.train.epochs, t.grace_period, t.reduction_factor
        )
        self.gpus, self.seed, self.now = gpus, seed, 0.0
        self.trials: list[SimTrial] = []
        self.running: list[tuple[float, int, SimTrial]] = []  # (epoch ends, order, trial)
        self.gpu_time = {"train": 0.0, "start": 0.0}
        self.paused_time = 0.0

    # the controller's methods the scheduler may call
    def get_trials(self) -> list[SimTrial]:
        return self.trials

    def _set_trial_status(self, trial: SimTrial, status: str) -> None:
        trial.status = status

    def stop_trial(self, trial: SimTrial) -> None:
        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, trial)
            self.searcher.on_trial_complete(trial.trial_id)
            self.paused_time += self.now - trial.paused_at
        else:
            self.scheduler.on_trial_complete(self, trial, trial.last_result)
            self.searcher.on_trial_complete(trial.trial_id, trial.last_result)
        trial.status = Trial.TERMINATED

    def speed_of(self, config: dict) -> float:
        key = SearchKey.of(config)
        rng = np.random.default_rng([self.seed, key.fold, config[FOLD_TRIAL], 7])
        return rng.lognormal(0, 0.1) * (2.0 if rng.random() < 0.05 else 1.0)

    def run(self) -> None:
        while True:
            self._fill()
            if not self.running:
                break
            ends, _, trial = heapq.heappop(self.running)
            self.now = ends
            self._report(trial)
        if unfinished := [t for t in self.trials if t.status != Trial.TERMINATED]:
            raise RuntimeError(f"stuck with {len(unfinished)} trials not ended")

    def _fill(self) -> None:
        while len(self.running) < self.gpus:
            trial = self.scheduler.choose_trial_to_run(self)
            if trial is None:
                config = self.searcher.suggest(str(len(self.trials)))
                if not isinstance(config, dict):
                    return
                trial = SimTrial(str(len(self.trials)), config, self.speed_of(config))
                self.trials.append(trial)
                self.scheduler.on_trial_add(self, trial)
            if trial.status == Trial.PAUSED:
                self.paused_time += self.now - trial.paused_at
            trial.status = Trial.RUNNING
            self.gpu_time["start"] += START_COST
            self._next_epoch(trial, START_COST)

    def _next_epoch(self, trial: SimTrial, delay: float = 0.0) -> None:
        self.gpu_time["train"] += trial.speed
        ends = self.now + delay + trial.speed
        heapq.heappush(self.running, (ends, int(trial.trial_id), trial))

    def _report(self, trial: SimTrial) -> None:
        trial.epoch += 1
        trial.best = max(trial.best, score(searched(trial.config), trial.epoch, self.seed))
        trial.last_result = {"epoch": trial.epoch, METRIC: trial.best}
        decision = self.scheduler.on_trial_result(self, trial, trial.last_result)
        if decision != STOP:
            self.searcher.on_trial_result(trial.trial_id, trial.last_result)
        if decision == CONTINUE:
            self._next_epoch(trial)
        elif decision == PAUSE:
            trial.status, trial.paused_at = Trial.PAUSED, self.now
        else:
            self.stop_trial(trial)

    def summary(self) -> dict:
        selected = {}
        for trial in self.trials:  # launch order within a search: ties go to the earlier
            key = SearchKey.of(trial.config)
            if key not in selected or trial.best > selected[key].best:
                selected[key] = trial
        qualities = [quality(searched(t.config)) for t in selected.values()]
        total = self.gpus * self.now
        return {
            "makespan": self.now,
            "train": self.gpu_time["train"] / total,
            "start": self.gpu_time["start"] / total,
            "idle": 1 - sum(self.gpu_time.values()) / total,
            "paused": self.paused_time,
            "trial-epochs": sum(t.epoch for t in self.trials),
            "selected q": 100 * float(np.mean(qualities)),
        }


def plot(table: dict, gpu_counts: list, widths: list, base: float, path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for w in widths:
        ratios = [table[g, w]["makespan"] / base for g in gpu_counts]
        ax.plot(gpu_counts, ratios, marker="o", label=f"W = {w}")
    ax.set(xscale="log", xlabel="GPUs (one trial each)", ylabel="makespan / (W=1, 5 GPUs)")
    ax.minorticks_off()
    ax.set_xticks(gpu_counts, [str(g) for g in gpu_counts])
    ax.axhline(0.4, color="grey", linestyle=":", linewidth=1)
    ax.legend(title="per search", loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="experiments/configs/iemocap.yaml")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per cluster and W")
    parser.add_argument("--plot", help="also draw makespan against GPUs, a line per W, here")
    parser.add_argument("--quick", action="store_true")
    return parser


def simulate(config: str, cfg, space, quick: list[str], folds: int, grid: tuple) -> dict:
    """One simulated search per seed, GPU count and W: its summary by (gpus, w, seed)."""
    gpu_counts, widths, seeds = grid
    runs = {}
    for seed in seeds:
        keys = search_keys(
            load_config(config, [*quick, f"train.seed={seed}"]), list(range(1, folds + 1))
        )
        for gpus in gpu_counts:
            for w in widths:
                cluster = Cluster(cfg, keys, space, gpus, w, seed)
                cluster.run()
                runs[gpus, w, seed] = cluster.summary()
    return runs


def tabulate(runs: dict, grid: tuple, base: float) -> dict:
    """Prints a row per GPU count and W (means over the seeds); returns them by (gpus, w)."""
    gpu_counts, widths, seeds = grid
    header = (
        f"{'GPUs':>4} {'W':>2} {'makespan':>9} {'vs W=1 G=5':>10} {'train':>6} {'start':>6} "
        f"{'idle':>6} {'paused':>7} {'trial-epochs':>12} {'regret':>7}"
    )
    print(header)
    table = {}
    for gpus in gpu_counts:
        for w in widths:
            rows = [runs[gpus, w, s] for s in seeds]
            mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            regret = float(
                np.mean(
                    [runs[gpus, 1, s]["selected q"] - runs[gpus, w, s]["selected q"] for s in seeds]
                )
            )
            table[gpus, w] = mean | {"regret": regret}
            print(
                f"{gpus:>4} {w:>2} {mean['makespan']:>9.1f} {mean['makespan'] / base:>10.2f} "
                f"{mean['train']:>6.0%} {mean['start']:>6.1%} {mean['idle']:>6.0%} "
                f"{mean['paused']:>7.1f} {mean['trial-epochs']:>12.0f} {regret:>7.2f}"
            )
    return table


def main() -> None:
    args = build_parser().parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    quick = ["tune.num_samples=4", "train.epochs=6", "tune.grace_period=1"] if args.quick else []
    cfg = load_config(args.config, quick)
    space = load_search_space(cfg.tune.search_space)
    gpu_counts, widths = ([5, 20], [1, 2]) if args.quick else ([5, 10, 20, 40, 80], [1, 2, 4, 8])
    seeds = range(1 if args.quick else args.seeds)
    t = cfg.tune
    folds = t.folds or len(SESSIONS)  # every outer fold of IEMOCAP
    print(
        f"{args.config}: {folds} searches of {t.num_samples} trials, {cfg.train.epochs} epochs, "
        f"ASHA grace {t.grace_period}, reduction {t.reduction_factor}; {len(seeds)} seeds\n"
    )
    grid = (gpu_counts, widths, seeds)
    runs = simulate(args.config, cfg, space, quick, folds, grid)
    base = np.mean([runs[gpu_counts[0], 1, s]["makespan"] for s in seeds])
    spread = float(np.std([runs[gpu_counts[0], 1, s]["selected q"] for s in seeds]))
    table = tabulate(runs, grid, base)
    print(
        "\nmakespan in epochs of one trial on one GPU; train/start/idle: shares of the GPUs' time; "
        "paused: trial-time spent paused at a rung (no GPU held); regret: UA points lost against "
        f"W=1 on the same GPUs and seed. W=1's spread over seeds: {spread:.2f} UA points"
    )
    if args.plot:
        plot(table, gpu_counts, widths, base, args.plot)
    g = 20 if 20 in gpu_counts else gpu_counts[-1]
    good = [w for w in widths if table[g, w]["regret"] <= spread] or [1]
    best = min(good, key=lambda w: table[g, w]["makespan"])
    print(
        f"makespan W={best} G={g} / W=1 G={gpu_counts[0]}: {table[g, best]['makespan'] / base:.2f}"
    )


if __name__ == "__main__":
    main()
