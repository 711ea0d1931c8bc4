"""A search space: a YAML mapping of dotted config keys to one distribution each, and optionally
`start`: points TPE evaluates first (e.g. the paper's settings). Checked whole before a job starts.

    loss.temperature: {loguniform: [0.02, 0.5]}
    model.dropout: {uniform: [0.05, 0.3]}
    loss.cross_pairs: {choice: [["11", "22"], ["11", "22", "12", "21"]]}
    start: [{loss.temperature: 0.07, model.dropout: 0.1}]

    space = load_search_space("experiments/configs/search_space.yaml")
    space.record()      # what results.json keeps of it
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.tune
import yaml

from turbo_ray.config import Config, override, unused_keys
from turbo_ray.errors import ConfigError, SearchSpaceError

FIXED_PER_SEARCH = ("loss.mode", "train.seed")  # the job's searches differ in these


@dataclass(frozen=True)
class Param:
    key: str  # dotted config key, e.g. "loss.temperature"
    kind: str  # loguniform | uniform | choice
    args: tuple

    def domain(self):
        if self.kind == "choice":
            return ray.tune.choice(list(self.args))
        return getattr(ray.tune, self.kind)(*self.args)

    def optuna_distribution(self):
        import optuna

        if self.kind == "choice":
            return optuna.distributions.CategoricalDistribution([hashable(c) for c in self.args])
        return optuna.distributions.FloatDistribution(*self.args, log=self.kind == "loguniform")


@dataclass(frozen=True)
class SearchSpace:
    params: list[Param]
    start: list[dict]  # points evaluated first (Optuna's points_to_evaluate); may set some keys

    def for_mode(self, mode: str) -> SearchSpace:
        """The parameters a search of loss mode `mode` can tune: those it never reads are
        dropped (the baseline has no temperature and no contrastive weights), and from the start
        points too."""
        unused = unused_keys(mode)
        params = [p for p in self.params if p.key not in unused]
        if not params:
            raise SearchSpaceError(
                f"loss.mode={mode} reads none of the searched parameters "
                f"({', '.join(p.key for p in self.params)}): add one it uses, e.g. train.lr"
            )
        start = [{k: v for k, v in point.items() if k not in unused} for point in self.start]
        return SearchSpace(params, [point for point in start if point])

    def record(self) -> dict:
        """The space and its start points as results.json keeps them."""
        return {"space": {p.key: {p.kind: list(p.args)} for p in self.params}, "start": self.start}


def load_search_space(path: str | Path) -> SearchSpace:
    """Parse and check a search-space file: every key must be a config key and both ends of every
    range (every choice, every start point) must make a valid config."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SearchSpaceError(f"{path}: cannot read the search space: {err}") from err
    if not isinstance(raw, dict) or not set(raw) - {"start"}:
        raise SearchSpaceError(
            f"{path}: expected a non-empty mapping of config keys to distributions"
        )
    start = raw.pop("start", [])
    if fixed := sorted(set(raw) & set(FIXED_PER_SEARCH)):
        raise SearchSpaceError(
            f"{path}: {fixed[0]} is not searched: each search runs one (--modes, --seeds)"
        )
    params = [_param(path, str(key), spec) for key, spec in raw.items()]
    for p in params:
        for value in p.args if p.kind == "choice" else p.args[:2]:
            _check(path, {p.key: value})
    if not isinstance(start, list) or not all(isinstance(point, dict) for point in start):
        raise SearchSpaceError(
            f"{path}: start must be a list of {{key: value}} mappings, got {start!r}"
        )
    for point in start:
        if unknown := sorted(set(point) - set(raw)):
            raise SearchSpaceError(
                f"{path}: start point {point} sets {unknown[0]!r}, which is not searched"
            )
        _check(path, point)
    return SearchSpace(params, start)


def _check(path: Path, values: dict) -> None:
    try:
        override(Config(), values)
    except ConfigError as err:
        raise SearchSpaceError(f"{path}: {', '.join(values)}: {err}") from err


def _param(path: Path, key: str, spec: Any) -> Param:
    where = f"{path}: {key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SearchSpaceError(
            f"{where}: expected one distribution, e.g. {{loguniform: [0.01, 0.5]}}, got {spec!r}"
        )
    ((kind, args),) = spec.items()
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SearchSpaceError(f"{where}: choice needs a non-empty list, got {args!r}")
        return Param(key, kind, tuple(args))
    if kind not in ("uniform", "loguniform"):
        raise SearchSpaceError(
            f"{where}: unknown distribution {kind!r} (use uniform, loguniform or choice)"
        )
    if (
        not isinstance(args, list)
        or len(args) != 2
        or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    ):
        raise SearchSpaceError(f"{where}: {kind} needs [low, high], got {args!r}")
    low, high = map(float, args)
    if not low < high or (kind == "loguniform" and low <= 0):
        raise SearchSpaceError(
            f"{where}: need {'0 < ' if kind == 'loguniform' else ''}low < high, got {args!r}"
        )
    return Param(key, kind, (low, high))


def hashable(value: Any) -> Any:
    """A choice as Optuna stores it (lists are not hashable)."""
    return tuple(value) if isinstance(value, list) else value
