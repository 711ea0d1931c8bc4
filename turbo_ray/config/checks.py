"""Every check of a config that its field types cannot express, each a ConfigError naming its
key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from turbo_ray.config.choices import (
    AUDIO_FORMATS,
    BASELINE,
    CROSS_PAIRS,
    MODALITIES,
    MODES,
    PLACEMENTS,
    PRECISIONS,
    PRESETS,
    SELECTION_METRICS,
    VAL_SPLITS,
)
from turbo_ray.config.classes import ClassMap
from turbo_ray.errors import ConfigError

if TYPE_CHECKING:
    from turbo_ray.config.schema import Config

ONE_OF = {
    "model.preset": PRESETS,
    "data.audio_format": AUDIO_FORMATS,
    "data.val_split": VAL_SPLITS,
    "model.modalities": MODALITIES,
    "loss.mode": MODES,
    "train.precision": PRECISIONS,
    "train.placement_strategy": PLACEMENTS,
    "tune.metric": SELECTION_METRICS,
}
FRACTIONS = ("model.dropout", "model.attention_dropout", "model.head_dropout", "data.val_fraction")
COUNTS = (  # at least one
    "data.preprocess_tasks",
    "data.read_tasks",
    "data.batch_size",
    "train.epochs",
    "train.grad_accum",
    "train.num_workers",
    "data.test_fold",
    "tune.num_samples",
    "tune.max_concurrent_trials",
    "tune.trials_at_once",
)


def validate(cfg: Config) -> None:
    """Every check that types alone cannot express, each a ConfigError naming its key."""
    for key, allowed in ONE_OF.items():
        if get(cfg, key) not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {get(cfg, key)!r}")
    for key in FRACTIONS:
        if not 0.0 <= get(cfg, key) < 1.0:
            raise ConfigError(f"{key} must be in [0, 1), got {get(cfg, key)}")
    for key in COUNTS:
        if get(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {get(cfg, key)}")
    for key in ("train.seed", "data.seed"):
        if get(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {get(cfg, key)}")
    if cfg.data.classes is not None:
        ClassMap.parse(cfg.data.classes)
    _check_folds(cfg)
    _check_modes(cfg)
    _check_loss(cfg)


def _check_folds(cfg: Config) -> None:
    if cfg.tune.folds is not None and cfg.tune.folds < 1:
        raise ConfigError(f"tune.folds must be >= 1 (null: every outer fold), got {cfg.tune.folds}")
    if cfg.data.folds is not None and cfg.data.folds < 2:
        raise ConfigError(f"data.folds must be >= 2 (null: a fold per group), got {cfg.data.folds}")


def _check_modes(cfg: Config) -> None:
    """`tune.modes` and `tune.seeds`: distinct values, known modes, seeds >= 0; one modality
    trains the baseline only."""
    for key in ("tune.modes", "tune.seeds"):
        values = get(cfg, key)
        if values is not None and (not values or len(set(values)) < len(values)):
            raise ConfigError(f"{key} must list distinct values, got {values}")
    if cfg.tune.seeds and min(cfg.tune.seeds) < 0:
        raise ConfigError(f"tune.seeds must be >= 0, got {cfg.tune.seeds}")
    for mode in [cfg.loss.mode, *(cfg.tune.modes or [])]:
        if mode not in MODES:
            raise ConfigError(f"tune.modes: {mode!r} is not one of {', '.join(MODES)}")
        if cfg.model.modalities != MODALITIES[0] and mode != BASELINE:
            raise ConfigError(
                f"model.modalities={cfg.model.modalities} (one modality) needs loss.mode="
                f"{BASELINE}: the contrastive terms pair both modalities' views; got {mode}"
            )


def _check_loss(cfg: Config) -> None:
    bad = [p for p in cfg.loss.cross_pairs if p not in CROSS_PAIRS]
    if bad or not cfg.loss.cross_pairs:
        raise ConfigError(
            f"loss.cross_pairs must be a non-empty subset of {CROSS_PAIRS}, "
            f"got {cfg.loss.cross_pairs}"
        )
    if cfg.loss.temperature <= 0:
        raise ConfigError(f"loss.temperature must be > 0, got {cfg.loss.temperature}")


def get(cfg: Config, key: str) -> Any:
    """The value of a dotted key, e.g. "loss.temperature"."""
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)
