"""One typed config for every layer: dataclasses, loaded from YAML plus dotted CLI overrides.

    cfg = load_config(
        "experiments/configs/iemocap.yaml", ["loss.temperature=0.1", "train.epochs=3"]
    )

The package imports nothing else of turbo_ray but its errors: `choices` (the names each choice
allows), `classes` (the grammar of `data.classes`), `schema` (the sections, built from a dict with
their types checked), `checks` (everything else a config can get wrong, checked before any job
starts), `loading` (YAML and overrides).
"""

from turbo_ray.config.choices import (
    AUDIO_FORMATS,
    BASELINE,
    CROSS_PAIRS,
    MINILM,
    MODE_TERMS,
    MODES,
    PRESETS,
    TINY_AUDIO,
    Preset,
    unused_keys,
)
from turbo_ray.config.classes import ClassMap
from turbo_ray.config.loading import load_config, override
from turbo_ray.config.schema import (
    Config,
    DataConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    TuneConfig,
)

__all__ = [
    "AUDIO_FORMATS",
    "BASELINE",
    "CROSS_PAIRS",
    "MINILM",
    "MODES",
    "MODE_TERMS",
    "PRESETS",
    "TINY_AUDIO",
    "ClassMap",
    "Config",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "Preset",
    "TrainConfig",
    "TuneConfig",
    "load_config",
    "override",
    "unused_keys",
]
