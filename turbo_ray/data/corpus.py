"""The corpus a run uses: an IEMOCAP release, a folder with a metadata.csv (`audiofolder.py`) or
the generated demo corpus, parsed and sharded once.

corpus = prepare_corpus(cfg.data)              # manifest + Parquet shards (cached, idempotent)
fold = corpus.fold(cfg.data)                   # train / val / test of the configured outer fold
print(corpus.summary())                        # its size and problem report
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from turbo_ray.config import DataConfig
from turbo_ray.config.classes import ClassMap
from turbo_ray.data.audiofolder import metadata_file, read_audiofolder
from turbo_ray.data.demo import make_demo_corpus
from turbo_ray.data.folds import Fold, OuterFolds, final_fold, outer_folds, split_fold
from turbo_ray.data.iemocap import DEFAULT_CLASSES, read_iemocap, session_folds
from turbo_ray.data.manifest import CorpusReport, Parsed
from turbo_ray.data.shard_writer import write_shards
from turbo_ray.errors import CorpusError
from turbo_ray.paths import demo_corpus_dir, shards_location


@dataclass(frozen=True)
class Corpus:
    root: Path  # the IEMOCAP_full_release folder (real or demo), or the metadata.csv's folder
    manifest: pd.DataFrame  # one row per usable utterance
    report: CorpusReport
    shards: str  # local path or URI of the Parquet shards
    classes: tuple[str, ...]
    is_demo: bool
    outer: OuterFolds  # how the corpus is cut into outer folds

    @property
    def label(self) -> str:
        """How result tables name the corpus."""
        return "demo corpus (a fixture, not real speech)" if self.is_demo else str(self.root)

    def summary(self) -> str:
        """What was found: the corpus, its size and classes, and its problem report."""
        label = "  (demo corpus: a fixture, not real speech)" if self.is_demo else ""
        counts = self.manifest.label.value_counts()
        classes = ", ".join(f"{name} {counts.get(name, 0)}" for name in self.classes)
        speakers = "" if self.has_speakers else "; no speakers: validation is a random share"
        return (
            f"corpus {self.root}{label}: {len(self.manifest)} utterances in "
            f"{len(self.classes)} classes ({classes}); outer folds: {self.outer.title} "
            f"({len(self.outer.groups)}){speakers}\n{self.report.summary()}"
        )

    @property
    def has_speakers(self) -> bool:
        """Whether every utterance names its speaker (a metadata.csv may not)."""
        return bool((self.manifest.speaker != "").all())

    def folds(self, cfg: DataConfig) -> list[Fold]:
        """The outer folds; every split must hold utterances (training and selection need
        them). Validation holds out whole speakers (`data.val_split`) where speakers are known."""
        val_split = self._val_split(cfg)
        if self.outer.kind == "split":
            folds = [split_fold(self.manifest, cfg.val_fraction, cfg.seed, val_split)]
        else:
            folds = outer_folds(self.manifest, cfg.val_fraction, cfg.seed, val_split)
        return self._checked(folds, cfg)

    def final_fold(self, cfg: DataConfig) -> Fold:
        """The final model's fold: all of the corpus, validation carved as in the outer
        folds, no test."""
        fold = final_fold(self.manifest, cfg.val_fraction, cfg.seed, self._val_split(cfg))
        return self._checked([fold], cfg, ("train", "val"))[0]

    def _val_split(self, cfg: DataConfig) -> str:
        return cfg.val_split if self.has_speakers else "random"

    def _checked(
        self, folds: list[Fold], cfg: DataConfig, splits=("train", "val", "test")
    ) -> list[Fold]:
        for fold in folds:
            for name in splits:
                if getattr(fold, name).empty:
                    raise CorpusError(
                        f"outer fold {fold.number} has an empty {name} split "
                        f"({len(self.manifest)} utterances in {self.root}): "
                        "raise data.val_fraction "
                        f"(now {cfg.val_fraction}) or use a bigger corpus"
                    )
        return folds

    def fold(self, cfg: DataConfig) -> Fold:
        """The outer fold `cfg.test_fold`."""
        folds = self.folds(cfg)
        for fold in folds:
            if fold.number == cfg.test_fold:
                return fold
        keys = [fold.number for fold in folds]
        raise CorpusError(
            f"data.test_fold={cfg.test_fold} is no outer fold of {self.root}; its folds: {keys}"
        )


def corpus_root(cfg: DataConfig) -> tuple[Path, bool]:
    """(the corpus folder, is_demo): `data.data_dir`, or the demo corpus, built once."""
    if cfg.data_dir:
        return Path(cfg.data_dir).expanduser().resolve(), False
    demo = make_demo_corpus(
        demo_corpus_dir(cfg), utterances_per_speaker=cfg.demo_utterances_per_speaker
    )
    return demo, True


def read_corpus(root: Path, cfg: DataConfig, strict: bool = False) -> Parsed:
    """The folder's corpus as read: a metadata.csv corpus, else an IEMOCAP release (its classes:
    `data.classes`, else 4class); `strict`: any problem is a CorpusError."""
    if metadata_file(root):
        return read_audiofolder(root, cfg.classes, cfg.folds, cfg.seed, strict)
    class_map = ClassMap.parse(cfg.classes) if cfg.classes else DEFAULT_CLASSES
    manifest, report = read_iemocap(root, class_map, strict=strict)
    return Parsed(manifest, report, class_map, session_folds(manifest))


def prepare_corpus(cfg: DataConfig, strict: bool = False) -> Corpus:
    """Parse the corpus and write (or reuse) its Parquet shards."""
    root, is_demo = corpus_root(cfg)
    manifest, report, class_map, outer = read_corpus(root, cfg, strict)
    _check_classes(root, manifest, report, class_map, cfg.positive_class)
    # pcm16 is stored at the encoder's rate: resampled once here, not in every epoch's feed
    rate = cfg.sample_rate if cfg.audio_format == "pcm16" else None
    shards = shards_location(cfg, _shards_key(root, class_map, cfg, rate, outer))
    classes = class_map.names
    write_shards(manifest, shards, audio_format=cfg.audio_format, classes=classes, sample_rate=rate)
    return Corpus(root, manifest, report, shards, classes, is_demo, outer)


def _check_classes(
    root: Path,
    manifest: pd.DataFrame,
    report: CorpusReport,
    class_map: ClassMap,
    positive_class: str | None,
) -> None:
    """A CorpusError unless the corpus has usable utterances in two classes or more, and
    `data.positive_class` (if set) is one class of two."""
    classes = class_map.names
    if manifest.empty or len(classes) < 2:
        problems = report.summary().splitlines()[0]
        found = f"classes {list(classes)}" if len(classes) < 2 else "no usable utterance"
        raise CorpusError(
            f"{root}: {found} in the classes {class_map.spec()} ({problems}; "
            f"`turbo-ray prepare --data-dir {root}` lists them)"
        )
    if positive_class is not None and (len(classes) != 2 or positive_class not in classes):
        raise CorpusError(
            f"data.positive_class {positive_class!r} must be one of a two-class corpus's "
            f"classes; {root} has {list(classes)}"
        )


def _shards_key(
    root: Path, class_map: ClassMap, cfg: DataConfig, rate: int | None, outer: OuterFolds
) -> str:
    """The shards' folder name: a hash of what they hold (corpus, classes, audio options)."""
    options = f"{cfg.audio_format}@{rate}" if rate else cfg.audio_format
    # the shards hold each row's outer fold: dealt groups are keyed by how they were dealt
    cut = f"|{cfg.folds}-fold|{cfg.seed}" if outer.kind == "group-kfold" else ""
    key = f"{root}|{class_map.spec()}|{options}{cut}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]
