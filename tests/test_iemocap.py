"""IEMOCAP loader: small trees in the real release layout, real files under tmp_path, no mocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from turbo_ray.config.classes import ClassMap
from turbo_ray.data.folds import outer_folds
from turbo_ray.data.iemocap import read_iemocap, session_folds
from turbo_ray.data.manifest import COLUMNS
from turbo_ray.errors import CorpusError

RATE = 16_000
WAV_SECONDS = 0.25
JUNK = (
    b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X" + bytes(32) + b"\x80\xff\xfe"
)  # a binary AppleDouble file
HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"


def write_wav(path: Path, seconds: float = WAV_SECONDS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * RATE)) / RATE
    sf.write(path, 0.1 * np.sin(2 * np.pi * 220 * t), RATE, subtype="PCM_16")


def times(index: int) -> tuple[float, float]:
    return 1.5 + 3 * index, 3.25 + 3 * index


def summary_line(utt: str, label: str, index: int) -> str:
    start, end = times(index)
    return f"[{start:.4f} - {end:.4f}]\t{utt}\t{label}\t[2.5000, 3.0000, 3.5000]"


def write_dialog(
    release: Path,
    dialog: str,
    turns: list[tuple[str, str, str]],
    newline: str = "\n",
    extra_transcription: tuple[str, ...] = (),
) -> None:
    """EmoEvaluation (header, summary + C-/A- lines per block), transcription and wavs of (turn,
    raw label, text)."""
    base = release / f"Session{int(dialog[3:5])}"
    emo, lines = [HEADER, ""], list(extra_transcription)
    for index, (turn, label, text) in enumerate(turns):
        utt = f"{dialog}_{turn}"
        start, end = times(index)
        emo += [
            summary_line(utt, label, index),
            "C-E1:\tNeutral;\t()",
            "C-E2:\tAnger;\t()",
            "A-E1:\tval 3; act 2; dom  2;\t()",
            "",
        ]
        lines.append(f"{utt} [{start:08.4f}-{end:08.4f}]: {text}")
        write_wav(base / "sentences" / "wav" / dialog / f"{utt}.wav")
    for folder, content in (("EmoEvaluation", emo), ("transcriptions", lines)):
        path = base / "dialog" / folder / f"{dialog}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((newline.join(content) + newline).encode())


def odd_tree(root: Path) -> Path:
    """Every odd case of the real release that the loader must parse, or skip, exactly."""
    release = root / "IEMOCAP_full_release"
    write_dialog(
        release,
        "Ses01F_impro01",
        [
            ("F000", "neu", "Excuse me."),
            ("M000", "exc", "Oh, that's great! [LAUGHTER]"),
            ("F001", "xxx", "Okay."),
            ("M001", "fru", "Whatever."),
            ("F002", "hap", "  I am so glad.  "),
        ],
        newline="\r\n",
        extra_transcription=(
            "Ses01F_impro01_MXX0 [000.5000-001.0000]: Mm-hmm.",
            "M: not an utterance line",
        ),
    )
    write_dialog(release, "Ses01M_impro05a", [("M000", "ang", "Get out.")])
    write_dialog(release, "Ses01M_impro05b", [("F000", "sad", "I miss her.")])
    write_dialog(
        release, "Ses01M_script01_1b", [("M000", "sad", "Goodbye."), ("F000", "neu", "Hello.")]
    )
    write_dialog(release, "Ses01F_script02_2", [("F000", "ang", "Stop it.")])
    write_dialog(release, "Ses02F_impro02", [("F000", "sad", "No."), ("M000", "neu", "Yes.")])
    session1 = release / "Session1"
    evaluation = session1 / "dialog" / "EmoEvaluation"
    (evaluation / "._Ses01F_impro01.txt").write_bytes(JUNK)
    (session1 / "dialog" / "transcriptions" / "._Ses01F_impro01.txt").write_bytes(JUNK)
    (session1 / "sentences" / "wav" / "Ses01F_impro01" / "._Ses01F_impro01_F000.wav").write_bytes(
        JUNK
    )
    write_wav(session1 / "sentences" / "wav" / ".hidden" / "Ses01F_impro01_F009.wav")
    for sub in (
        "Categorical",
        "Attribute",
        "Self-evaluation",
    ):  # decoys: a duplicate and a label without wav
        (evaluation / sub).mkdir()
        (evaluation / sub / "Ses01F_impro01_e1.txt").write_text(
            summary_line("Ses01F_impro01_F000", "ang", 0)
            + "\n"
            + summary_line("Ses01F_impro01_F008", "sad", 1)
            + "\n"
        )
    return release


EXPECTED_4CLASS = [  # utterance_id, speaker, gender, label, label_id, label_raw, text
    ("Ses01F_impro01_F000", "Ses01F", "F", "neutral", 0, "neu", "Excuse me."),
    ("Ses01F_impro01_F002", "Ses01F", "F", "happy", 1, "hap", "I am so glad."),
    ("Ses01F_impro01_M000", "Ses01M", "M", "happy", 1, "exc", "Oh, that's great! [LAUGHTER]"),
    ("Ses01F_script02_2_F000", "Ses01F", "F", "angry", 2, "ang", "Stop it."),
    ("Ses01M_impro05a_M000", "Ses01M", "M", "angry", 2, "ang", "Get out."),
    ("Ses01M_impro05b_F000", "Ses01F", "F", "sad", 3, "sad", "I miss her."),
    ("Ses01M_script01_1b_F000", "Ses01F", "F", "neutral", 0, "neu", "Hello."),
    ("Ses01M_script01_1b_M000", "Ses01M", "M", "sad", 3, "sad", "Goodbye."),
    ("Ses02F_impro02_F000", "Ses02F", "F", "sad", 3, "sad", "No."),
    ("Ses02F_impro02_M000", "Ses02M", "M", "neutral", 0, "neu", "Yes."),
]


def test_odd_cases_parse_exactly(tmp_path: Path) -> None:
    release = odd_tree(tmp_path)
    df, report = read_iemocap(release)
    assert report.problems() == {}
    assert report.excluded == {"fru": 1, "xxx": 1}
    assert list(df.columns) == list(COLUMNS)
    assert isinstance(df.index, pd.RangeIndex)
    got = list(
        df[
            ["utterance_id", "speaker", "gender", "label", "label_id", "label_raw", "text"]
        ].itertuples(index=False, name=None)
    )
    assert got == EXPECTED_4CLASS
    assert df.session.tolist() == [1] * 8 + [2] * 2
    assert df.dialog.tolist()[:4] == ["Ses01F_impro01"] * 3 + ["Ses01F_script02_2"]

    row = df.set_index("utterance_id").loc["Ses01F_impro01_M000"]
    wav = release / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_M000.wav"
    assert row.wav_path == str(wav.resolve())
    assert (row.start, row.end) == times(1)
    assert (row.valence, row.activation, row.dominance) == (2.5, 3.0, 3.5)
    assert row.duration == pytest.approx(WAV_SECONDS) and row.sample_rate == RATE
    assert df.dtypes[["session", "label_id", "sample_rate"]].tolist() == [np.int64] * 3


def test_all_class_set_keeps_every_label(tmp_path: Path) -> None:
    df, report = read_iemocap(odd_tree(tmp_path), classes=ClassMap.parse("all"))
    assert len(df) == 12 and report.excluded == {}
    by_id = df.set_index("utterance_id")
    assert by_id.loc["Ses01F_impro01_M000", "label"] == "excited"
    assert by_id.loc["Ses01F_impro01_F001", "label"] == "no_agreement"
    assert by_id.loc["Ses01F_impro01_M001", "label"] == "frustrated"
    assert (df.label_id == [ClassMap.parse("all").names.index(name) for name in df.label]).all()


def test_parent_folder_and_non_iemocap_folder(tmp_path: Path) -> None:
    odd_tree(tmp_path)
    assert len(read_iemocap(tmp_path)[0]) == len(EXPECTED_4CLASS)
    (tmp_path / "other" / "Sessions").mkdir(parents=True)
    with pytest.raises(
        CorpusError, match=r"other is not an IEMOCAP_full_release folder: expected Session1"
    ):
        read_iemocap(tmp_path / "other")


def append(path: Path, *lines: str) -> list[int]:
    """Append lines to a text file; their line numbers."""
    old = path.read_text().split("\n")[:-1]
    path.write_text("\n".join(old + list(lines)) + "\n")
    return list(range(len(old) + 1, len(old) + len(lines) + 1))


def test_problems_are_reported_and_excluded(tmp_path: Path) -> None:
    release = odd_tree(tmp_path)
    s1, s2 = release / "Session1", release / "Session2"
    (s1 / "sentences/wav/Ses01M_impro05a/Ses01M_impro05a_M000.wav").unlink()  # label without wav
    write_wav(s1 / "sentences/wav/Ses01F_impro01/Ses01F_impro01_F007.wav")  # wav without label
    (s1 / "sentences/wav/Ses01M_impro05b/Ses01M_impro05b_F000.wav").write_bytes(b"RIFF garbage")
    sf.write(
        s2 / "sentences/wav/Ses02F_impro02/Ses02F_impro02_M000.wav",
        np.zeros(0),
        RATE,
        subtype="PCM_16",
    )
    script = s1 / "dialog/transcriptions/Ses01M_script01_1b.txt"
    script.write_text(
        "".join(line for line in script.read_text().splitlines(True) if "_M000" not in line)
    )
    emo2, text2 = (
        s2 / "dialog/EmoEvaluation/Ses02F_impro02.txt",
        s2 / "dialog/transcriptions/Ses02F_impro02.txt",
    )
    write_wav(s2 / "sentences/wav/Ses02F_impro02/Ses02F_impro02_F001.wav")
    bad_decimals = "[20.00 - 21.0000]\tSes02F_impro02_F002\tneu\t[2.5000, 2.5000, 2.5000]"
    bad_id = summary_line("Ses02F_impro09_F003", "neu", 7)
    numbers = append(
        emo2, summary_line("Ses02F_impro02_F001", "hpy", 5), "", bad_decimals, "", bad_id
    )
    (text_line,) = append(text2, "Ses02F_impro02_F001 [016.5000-018.2500] no colon")
    append(
        s1 / "dialog/EmoEvaluation/Ses01M_impro05a.txt",
        summary_line("Ses01F_script02_2_F000", "sad", 3),
    )
    lines = text2.read_bytes().split(
        b"\n"
    )  # a Latin-1 byte in a kept utterance's text: kept, reported
    (latin1,) = [n for n, line in enumerate(lines, 1) if line.startswith(b"Ses02F_impro02_F000")]
    lines[latin1 - 1] = lines[latin1 - 1].replace(b"No.", b"No\xe9.")
    text2.write_bytes(b"\n".join(lines))
    bad_byte = lines[latin1 - 1].index(b"\xe9")
    first = (
        s1 / "sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"
    )  # one wav name in two folders
    second = s1 / "sentences/wav/Ses01F_impro01b/Ses01F_impro01_F000.wav"
    write_wav(second)
    stereo = s1 / "sentences/wav/Ses01F_impro01/Ses01F_impro01_F002.wav"
    sf.write(stereo, np.zeros((RATE // 4, 2)), RATE, subtype="PCM_16")

    df, report = read_iemocap(release)
    assert report.problems() == {
        "label_without_wav": ["Ses01M_impro05a_M000"],
        "wav_without_label": ["Ses01F_impro01_F007"],
        "unreadable_wav": ["Ses01M_impro05b_F000", "Ses02F_impro02_M000"],
        "missing_transcription": ["Ses01M_script01_1b_M000"],
        "unknown_label": ["Ses02F_impro02_F001"],
        "malformed_lines": [
            f"{emo2}:{numbers[2]}: {bad_decimals}",
            f"{emo2}:{numbers[4]}: {bad_id}",
            f"{text2}:{text_line}: Ses02F_impro02_F001 [016.5000-018.2500] no colon",
        ],
        "undecodable_text": [f"{text2}:{latin1}: not UTF-8 at byte {bad_byte}"],
        "duplicate_ids": ["Ses01F_script02_2_F000"],
        "duplicate_wavs": [f"Ses01F_impro01_F000: {first.resolve()}, {second.resolve()}"],
    }
    assert df.utterance_id.tolist() == [
        "Ses01F_impro01_F002",
        "Ses01F_impro01_M000",
        "Ses01M_script01_1b_F000",
        "Ses02F_impro02_F000",
    ]
    assert df.text.iloc[-1] == "No\ufffd."
    assert report.downmixed == ["Ses01F_impro01_F002"]  # kept: the shards hold it down-mixed
    summary = report.summary()
    assert (
        "12 problem(s)" in summary
        and "unreadable_wav: 2" in summary
        and "Ses01F_impro01_F007" in summary
    )
    assert "fru 1, xxx 1" in summary and "down-mixed to mono: 1: Ses01F_impro01_F002" in summary

    with pytest.raises(CorpusError) as error:
        read_iemocap(release, strict=True)
    for items in report.problems().values():
        assert all(item in str(error.value) for item in items)


@pytest.fixture(scope="module")
def five_sessions(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """5 sessions × 2 speakers × 6 utterances: 60 rows, 3 of each label per session."""
    release = tmp_path_factory.mktemp("five") / "IEMOCAP_full_release"
    raw = ("neu", "hap", "ang", "sad")
    for s in range(1, 6):
        turns = [
            (f"{g}{i:03d}", raw[(i + 2 * (g == "M")) % 4], "Hi.") for g in "FM" for i in range(6)
        ]
        write_dialog(release, f"Ses0{s}{'FM'[s % 2]}_impro01", turns)
    return read_iemocap(release, strict=True)[0]


def ids(df: pd.DataFrame) -> set[str]:
    return set(df.utterance_id)


@pytest.mark.parametrize("val_split", ["random", "speaker"])
def test_outer_folds_partition_the_manifest(five_sessions: pd.DataFrame, val_split: str) -> None:
    folds = outer_folds(five_sessions, val_fraction=0.2, seed=0, val_split=val_split)
    assert [f.number for f in folds] == [1, 2, 3, 4, 5]
    for fold in folds:
        assert set(fold.test.session) == {fold.number} and len(fold.test) == 12
        assert fold.number not in set(fold.train.session) | set(fold.val.session)
        assert not ids(fold.train) & ids(fold.val) and not (ids(fold.train) | ids(fold.val)) & ids(
            fold.test
        )
        assert ids(fold.train) | ids(fold.val) | ids(fold.test) == ids(five_sessions)
        assert all(isinstance(df.index, pd.RangeIndex) for df in (fold.train, fold.val, fold.test))
        if val_split == "random":  # stratified: round(0.2 × 12) of each label
            assert fold.val.label.value_counts().to_dict() == dict.fromkeys(
                ClassMap.parse("4class").names, 2
            )
        else:  # round(0.2 × 8) whole speakers
            assert fold.val.speaker.nunique() == 2 and not set(fold.val.speaker) & set(
                fold.train.speaker
            )


def test_outer_folds_are_seeded(five_sessions: pd.DataFrame) -> None:
    for val_split in ("random", "speaker"):
        first, again, other = (
            outer_folds(five_sessions, 0.2, seed, val_split) for seed in (0, 0, 1)
        )
        assert [ids(f.val) for f in first] == [ids(f.val) for f in again]
        assert [ids(f.val) for f in first] != [ids(f.val) for f in other]


def test_outer_folds_need_two(five_sessions: pd.DataFrame) -> None:
    with pytest.raises(CorpusError, match=r"only one outer fold \(\[1\]\) in the corpus"):
        outer_folds(five_sessions[five_sessions.session == 1])


def test_each_session_is_an_outer_fold(five_sessions: pd.DataFrame) -> None:
    outer = session_folds(five_sessions[five_sessions.session != 3])
    assert outer.kind == "loso" and outer.title == "leave-one-session-out"
    assert outer.groups == {1: ["Session1"], 2: ["Session2"], 4: ["Session4"], 5: ["Session5"]}


def test_the_manifest_carries_nothing_in_attrs(tmp_path: Path) -> None:
    df, report = read_iemocap(odd_tree(tmp_path), classes=ClassMap.parse("4class"))
    assert len(df) == len(EXPECTED_4CLASS) and report.problems() == {} and not df.attrs
