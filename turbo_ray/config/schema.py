"""The config's schema: a dataclass per section (data, model, loss, train, tune), checked whole on
construction (`checks.validate`). The defaults are the embedded demo (demo corpus, tiny preset,
minutes on 2 cores); real runs start from experiments/configs/iemocap.yaml."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from turbo_ray.config.checks import validate
from turbo_ray.config.choices import CROSS_PAIRS
from turbo_ray.errors import ConfigError


@dataclass
class DataConfig:
    # IEMOCAP_full_release, or a folder of audio files with a metadata.csv (docs/own-data.md);
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
    test_fold: int = 1  # the outer fold of a single run (tests, benchmarks)
    seed: int = 0


@dataclass
class ModelConfig:
    preset: str = "tiny"  # tiny | base | large (docs/method.md: presets)
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
        """A config as stored (a checkpoint's, a model folder's), renamed keys under their new
        names."""
        return _build(cls, renamed(raw), "")


# keys renamed since configs were first stored: a stored config is read under the new name, a
# file or override that uses the old one is an error naming the new one
RENAMED = {"data.test_session": "data.test_fold"}


def renamed(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` with every old key of `RENAMED` under its new name."""
    raw = {
        section: dict(values) if isinstance(values, dict) else values
        for section, values in raw.items()
    }
    for old, new in RENAMED.items():
        (section, key), (_, new_key) = old.split("."), new.split(".")
        if isinstance(raw.get(section), dict) and key in raw[section]:
            raw[section][new_key] = raw[section].pop(key)
    return raw


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
