"""The corpus a run uses: an IEMOCAP release or the generated demo corpus, parsed and sharded once.

corpus = prepare_corpus(cfg.data)              # manifest + Parquet shards (cached, idempotent)
fold = corpus.fold(cfg.data)                   # train / val / test of the configured LOSO fold
print(corpus.summary())                        # its size and problem report
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from turbo_ray.config import CLASS_SETS, DataConfig
from turbo_ray.data.demo import make_demo_corpus
from turbo_ray.data.folds import Fold, loso_folds
from turbo_ray.data.iemocap import CorpusError, CorpusReport, load_manifest
from turbo_ray.data.shard_writer import write_shards
from turbo_ray.paths import demo_corpus_dir, shards_location


@dataclass(frozen=True)
class Corpus:
    root: Path  # the IEMOCAP_full_release folder (real or demo)
    manifest: pd.DataFrame  # one row per usable utterance
    report: CorpusReport
    shards: str  # local path or URI of the Parquet shards
    classes: tuple[str, ...]
    is_demo: bool

    @property
    def label(self) -> str:
        """How result tables name the corpus."""
        return "demo corpus (a fixture, not real speech)" if self.is_demo else str(self.root)

    def summary(self) -> str:
        """What was found: the corpus, its size and classes, and its problem report."""
        label = "  (demo corpus: a fixture, not real speech)" if self.is_demo else ""
        return (
            f"corpus {self.root}{label}: {len(self.manifest)} utterances "
            f"in {len(self.classes)} classes\n{self.report.summary()}"
        )

    def folds(self, cfg: DataConfig) -> list[Fold]:
        """The LOSO folds; every split must hold utterances (training and selection need them)."""
        folds = loso_folds(self.manifest, cfg.val_fraction, cfg.seed, cfg.val_split)
        for fold in folds:
            for name in ("train", "val", "test"):
                if getattr(fold, name).empty:
                    raise CorpusError(
                        f"the fold testing session {fold.test_session} has an empty {name} split "
                        f"({len(self.manifest)} utterances in {self.root}): "
                        "raise data.val_fraction "
                        f"(now {cfg.val_fraction}) or use a bigger corpus"
                    )
        return folds

    def fold(self, cfg: DataConfig) -> Fold:
        """The fold whose test set is session `cfg.test_session`."""
        for fold in self.folds(cfg):
            if fold.test_session == cfg.test_session:
                return fold
        raise CorpusError(f"data.test_session={cfg.test_session} is not a session of {self.root}")


def corpus_root(cfg: DataConfig) -> tuple[Path, bool]:
    """(IEMOCAP_full_release folder, is_demo): the configured release, or the demo corpus,
    built once."""
    if cfg.data_dir:
        return Path(cfg.data_dir).expanduser().resolve(), False
    demo = make_demo_corpus(
        demo_corpus_dir(cfg), utterances_per_speaker=cfg.demo_utterances_per_speaker
    )
    return demo, True


def prepare_corpus(cfg: DataConfig, strict: bool = False) -> Corpus:
    """Parse the corpus and write (or reuse) its Parquet shards."""
    root, is_demo = corpus_root(cfg)
    manifest = load_manifest(root, cfg.classes, strict=strict)
    classes = CLASS_SETS[cfg.classes]
    if manifest.empty:
        problems = manifest.attrs["report"].summary().splitlines()[0]
        raise CorpusError(
            f"{root}: no usable utterance in the class set {cfg.classes!r} ({problems}; "
            f"`turbo-ray prepare --data-dir {root}` lists them)"
        )
    # pcm16 is stored at the encoder's rate: resampled once here, not in every epoch's feed
    rate = cfg.sample_rate if cfg.audio_format == "pcm16" else None
    options = f"{cfg.audio_format}@{rate}" if rate else cfg.audio_format
    key = hashlib.sha256(f"{root}|{cfg.classes}|{options}".encode()).hexdigest()[:12]
    shards = shards_location(cfg, key)
    write_shards(manifest, shards, audio_format=cfg.audio_format, classes=classes, sample_rate=rate)
    return Corpus(root, manifest, manifest.attrs.get("report"), shards, classes, is_demo)
