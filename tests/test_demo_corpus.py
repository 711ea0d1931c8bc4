"""The generated demo corpus: real files under tmp_path, read back by the real loader."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from turbo_ray.config.classes import ClassMap
from turbo_ray.data.demo import MARKER, make_demo_corpus
from turbo_ray.data.iemocap import read_iemocap

PER_SPEAKER = 8
FOUR_CLASS_RAW = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}


def tree_files(release: Path) -> dict[str, Path]:
    """Every file under `release` (hidden ones included) by relative path."""
    return {str(p.relative_to(release)): p for p in sorted(release.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_corpus(
        tmp_path_factory.mktemp("demo"), seed=0, utterances_per_speaker=PER_SPEAKER
    )


@pytest.fixture(scope="module")
def recorded(release: Path) -> dict:
    return json.loads((release / MARKER).read_text())


def test_loader_reads_it_with_no_problems_and_the_recorded_counts(
    release: Path, recorded: dict
) -> None:
    df, report = read_iemocap(release, strict=True)
    assert report.problems() == {}
    assert recorded["utterances"] == 10 * PER_SPEAKER
    expected, excluded = Counter(), Counter()
    for session, counts in recorded["labels_per_session"].items():
        for raw, n in counts.items():
            if raw in FOUR_CLASS_RAW:
                expected[int(session), FOUR_CLASS_RAW[raw]] += n
            else:
                excluded[raw] += n
    assert df.groupby(["session", "label"]).size().to_dict() == expected
    assert report.excluded == excluded and set(excluded) == {"fru", "xxx"}
    every, _ = read_iemocap(release, classes=ClassMap.parse("all"))
    assert len(every) == recorded["utterances"]

    assert sorted(df.session.unique()) == [1, 2, 3, 4, 5]
    assert sorted(df.speaker.unique()) == [f"Ses0{s}{g}" for s in range(1, 6) for g in "FM"]
    assert every.groupby("dialog").gender.nunique().eq(2).all()  # every dialog has both actors
    assert set(df[df.dialog.str[5] == "F"].gender) == {"F", "M"}
    dialogs = set(every.dialog)
    assert any(re.search(r"impro0\da$", d) for d in dialogs) and any(
        re.search(r"impro0\db$", d) for d in dialogs
    )
    assert any(re.search(r"script0\d_\d$", d) for d in dialogs) and "Ses05M_script01_1b" in dialogs


def test_the_odd_cases_are_on_disk(release: Path) -> None:
    files = tree_files(release)
    evaluation = release / "Session1" / "dialog" / "EmoEvaluation"
    apple = [p for p in files.values() if p.name.startswith("._")]
    assert {p.parent.parent.name for p in apple} == {
        "dialog",
        "wav",
    }  # EmoEvaluation/ and wav/<dialog>/
    assert all(p.read_bytes().startswith(b"\x00\x05\x16\x07") for p in apple)
    assert list((evaluation / "Categorical").glob("*.txt"))
    transcriptions = [p.read_bytes() for name, p in files.items() if "/transcriptions/" in name]
    assert sum(b"\r\n" in t for t in transcriptions) == 1
    assert any(re.search(rb"_[FM]XX0 \[", t) for t in transcriptions)
    emo = (evaluation / "Ses01F_impro01.txt").read_text()
    assert emo.startswith("% ") and "\nC-E1:\t" in emo and "\nA-E1:\tval " in emo and "\n\n[" in emo


def test_same_seed_same_bytes_other_seed_other_audio(release: Path, tmp_path: Path) -> None:
    other = make_demo_corpus(tmp_path, seed=1, utterances_per_speaker=PER_SPEAKER)
    wavs = [name for name in tree_files(release) if name.endswith(".wav") and "/._" not in name]
    assert wavs == [n for n in tree_files(other) if n.endswith(".wav") and "/._" not in n]
    assert len(wavs) == 10 * PER_SPEAKER  # the same layout and names, other audio in every file
    assert all((release / n).read_bytes() != (other / n).read_bytes() for n in wavs)
    again = make_demo_corpus(
        tmp_path, seed=0, utterances_per_speaker=PER_SPEAKER
    )  # replaces the seed-1 corpus
    assert again == other
    first, second = tree_files(release), tree_files(again)
    assert first.keys() == second.keys()
    assert all(first[name].read_bytes() == second[name].read_bytes() for name in first)
    assert [p.name for p in tmp_path.iterdir()] == [
        "IEMOCAP_full_release"
    ]  # no build folder left behind


def test_second_call_returns_at_once_without_rewriting(release: Path) -> None:
    before = {name: os.stat(p).st_mtime_ns for name, p in tree_files(release).items()}
    assert make_demo_corpus(release.parent, seed=0, utterances_per_speaker=PER_SPEAKER) == release
    assert {name: os.stat(p).st_mtime_ns for name, p in tree_files(release).items()} == before


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "IEMOCAP_full_release" / "Session1").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a generated demo corpus"):
        make_demo_corpus(tmp_path, utterances_per_speaker=PER_SPEAKER)


def test_audio_is_16k_mono_pcm16_and_carries_arousal(release: Path) -> None:
    df, _ = read_iemocap(release)
    energy = {}
    for row in df.itertuples():
        info = sf.info(row.wav_path)
        assert (info.samplerate, info.channels, info.subtype) == (16_000, 1, "PCM_16")
        assert 1.0 <= info.duration <= 3.5
        wave, _ = sf.read(row.wav_path)
        energy[row.utterance_id] = 10 * np.log10(np.mean(wave**2))
    df["energy_db"] = df.utterance_id.map(energy)
    by_label = df.groupby("label").energy_db.mean()
    assert min(by_label["angry"], by_label["happy"]) > max(by_label["neutral"], by_label["sad"]) + 3
    assert by_label["sad"] == by_label.min()


def test_a_fold_with_an_empty_split_is_a_clear_error(tmp_path):
    from turbo_ray.config import DataConfig
    from turbo_ray.data.corpus import prepare_corpus

    cfg = DataConfig(cache_dir=str(tmp_path), demo_utterances_per_speaker=4, val_split="random")
    corpus = prepare_corpus(
        cfg
    )  # a speaker split always holds a speaker; 10 % of 16 rows per label is 0
    with pytest.raises(ValueError, match="empty val split .* raise data.val_fraction"):
        corpus.folds(cfg)
    assert all(
        len(f.val)
        for f in corpus.folds(
            DataConfig(cache_dir=str(tmp_path), val_fraction=0.5, demo_utterances_per_speaker=4)
        )
    )
