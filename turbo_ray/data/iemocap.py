"""Parse an IEMOCAP_full_release folder into a manifest (one row per utterance, `manifest.py`).

    manifest, report = read_iemocap("/data/IEMOCAP_full_release", ClassMap.parse("all"))
    outer = session_folds(manifest)                      # one outer fold per session

The layout and the parsing rules are those of the release (docs/own-data.md: IEMOCAP). Anything
that does not fit them is reported (`CorpusReport`) and the utterance left out: a wrong or missing
label is never guessed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from turbo_ray.config.classes import ClassMap
from turbo_ray.data.folds import OuterFolds
from turbo_ray.data.manifest import COLUMNS, DTYPES, CorpusReport, wav_info
from turbo_ray.errors import CorpusError

RELEASE_NAME = "IEMOCAP_full_release"
SESSIONS = tuple(f"Session{n}" for n in range(1, 6))
RAW_LABELS = ("neu", "hap", "exc", "ang", "sad", "fru", "fea", "sur", "dis", "oth", "xxx")
LONG_NAMES = dict(zip(RAW_LABELS, ClassMap.parse("all").names))  # raw label -> its long name
DEFAULT_CLASSES = ClassMap.parse("4class")  # data.classes unset

SUMMARY_LINE = re.compile(
    r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(\S+)\t([a-z]{3})\t"
    r"\[(\d\.\d{4}), (\d\.\d{4}), (\d\.\d{4})\]$"
)
UTTERANCE_ID = re.compile(r"^Ses0[1-5][FM]_(impro0[1-8][ab]?|script0[1-3]_[1-3]b?)_[FM]\d{3}$")


@dataclass(frozen=True)
class _Label:
    start: float
    end: float
    raw: str
    valence: float
    activation: float
    dominance: float


def release_dir(root: str | Path) -> Path:
    """The absolute IEMOCAP_full_release folder: `root` itself, or `root/IEMOCAP_full_release`."""
    root = Path(root).expanduser().resolve()
    for candidate in (root, root / RELEASE_NAME):
        if any((candidate / session).is_dir() for session in SESSIONS):
            return candidate
    raise CorpusError(
        f"{root} is not an {RELEASE_NAME} folder: expected Session1..Session5 folders in it "
        "(or, for another corpus, a metadata.csv: docs/own-data.md)"
    )


def _visible(folder: Path, suffix: str = "") -> list[Path]:
    """Sorted entries of `folder` (files with `suffix`, or folders if no suffix), skipping names
    that start with "."."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and (p.is_file() and p.suffix == suffix if suffix else p.is_dir())
    )


def _lines(path: Path, report: CorpusReport) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file without its \\r; a line that is not UTF-8 is reported and
    kept with its bad bytes replaced."""
    for number, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            report.undecodable_text.append(f"{path}:{number}: not UTF-8 at byte {err.start}")
            line = raw.decode("utf-8", errors="replace")
        yield number, line.rstrip("\r")


def _parse_labels(files: list[Path], report: CorpusReport) -> tuple[dict[str, _Label], set[str]]:
    """The summary label of every well-formed line by utterance id, and the ids labelled more
    than once."""
    labels: dict[str, _Label] = {}
    duplicates: set[str] = set()
    for path in files:
        for number, line in _lines(path, report):
            if not line.startswith("["):  # the % header, C-/A- annotator lines, blank lines
                continue
            match = SUMMARY_LINE.match(line)
            if match is None or not UTTERANCE_ID.match(match[3]):
                report.malformed_lines.append(f"{path}:{number}: {line}")
                continue
            if match[3] in labels:
                duplicates.add(match[3])
            labels[match[3]] = _Label(
                float(match[1]), float(match[2]), match[4], *map(float, match.group(5, 6, 7))
            )
    return labels, duplicates


def _parse_transcriptions(
    files: list[Path], report: CorpusReport
) -> tuple[dict[str, str], set[str]]:
    """Text by utterance id, and the ids given two different texts."""
    texts: dict[str, str] = {}
    conflicting: set[str] = set()
    for path in files:
        for number, line in _lines(path, report):
            tokens = line.split(None, 1)
            if not tokens or not tokens[0].startswith("Ses") or "XX" in tokens[0]:
                continue
            _, sep, text = line.partition("]: ")
            if not sep:
                report.malformed_lines.append(f"{path}:{number}: {line}")
            elif texts.setdefault(tokens[0], text.strip()) != text.strip():
                conflicting.add(tokens[0])
    return texts, conflicting


def _dialog_files(sessions: list[Path], kind: str) -> list[Path]:
    """The sessions' `dialog/<kind>/*.txt` files (EmoEvaluation, transcriptions)."""
    return [f for s in sessions for f in _visible(s / "dialog" / kind, ".txt")]


def _wav_paths(sessions: list[Path]) -> dict[str, list[Path]]:
    """Every `sentences/wav/<dialog>/*.wav` by utterance id (more than one: a duplicate)."""
    wav_paths: dict[str, list[Path]] = {}
    for dialog in (d for s in sessions for d in _visible(s / "sentences" / "wav")):
        for wav in _visible(dialog, ".wav"):
            wav_paths.setdefault(wav.stem, []).append(wav)
    return wav_paths


def read_iemocap(
    root: str | Path, classes: ClassMap = DEFAULT_CLASSES, strict: bool = False
) -> tuple[pd.DataFrame, CorpusReport]:
    """The manifest of the release's usable utterances whose label is in `classes`, and the report
    of everything else; `strict`: any problem is a CorpusError."""
    release = release_dir(root)
    sessions = [release / s for s in SESSIONS if (release / s).is_dir()]
    report = CorpusReport()
    labels, relabelled = _parse_labels(_dialog_files(sessions, "EmoEvaluation"), report)
    texts, retold = _parse_transcriptions(_dialog_files(sessions, "transcriptions"), report)
    wav_paths = _wav_paths(sessions)
    wavs = {utt: paths[0] for utt, paths in wav_paths.items() if len(paths) == 1}
    report.duplicate_wavs = [
        f"{utt}: {', '.join(map(str, paths))}"
        for utt, paths in sorted(wav_paths.items())
        if len(paths) > 1
    ]
    duplicates = relabelled | retold | (set(wav_paths) - set(wavs))
    report.duplicate_ids = sorted(relabelled | retold)
    report.unknown_label = sorted(
        u for u, lab in labels.items() if lab.raw not in RAW_LABELS and u not in duplicates
    )
    report.wav_without_label = sorted(set(wav_paths) - set(labels))
    ids = sorted(set(labels) - duplicates - set(report.unknown_label))
    manifest = _manifest(ids, labels, texts, wavs, classes, report)
    if strict:
        report.refuse(release)
    return manifest, report


def _manifest(
    ids: list[str],
    labels: dict[str, _Label],
    texts: dict[str, str],
    wavs: dict[str, Path],
    classes: ClassMap,
    report: CorpusReport,
) -> pd.DataFrame:
    """The rows of the `ids` with a readable wav, a text and a label in `classes`; the others
    reported (outside the class set: counted by raw label)."""
    rows, excluded = [], Counter()
    for utt in ids:
        label, wav = labels[utt], wavs.get(utt)
        info = None if wav is None else wav_info(wav)
        if wav is None:
            report.label_without_wav.append(utt)
        elif info is None:
            report.unreadable_wav.append(utt)
        if utt not in texts:
            report.missing_transcription.append(utt)
        if info is None or utt not in texts:
            continue
        name = classes.of(LONG_NAMES[label.raw])
        if name is None:
            excluded[label.raw] += 1
            continue
        if info[2] > 1:  # channels
            report.downmixed.append(utt)
        rows.append(_row(utt, label, texts[utt], wav, info, name, classes.names.index(name)))
    report.excluded = dict(sorted(excluded.items()))
    return pd.DataFrame(rows, columns=list(COLUMNS)).astype(DTYPES)


def _row(
    utt: str,
    label: _Label,
    text: str,
    wav: Path,
    info: tuple[int, int, int],
    name: str,
    label_id: int,
) -> tuple:
    """An utterance in `COLUMNS`' order; its session, dialog, speaker and gender are in its id."""
    (frames, sample_rate, _), (dialog, turn) = info, utt.rsplit("_", 1)
    return (
        utt,
        int(utt[3:5]),
        dialog,
        utt[:5] + turn[0],
        turn[0],
        name,
        label_id,
        label.raw,
        text,
        str(wav),
        label.start,
        label.end,
        label.valence,
        label.activation,
        label.dominance,
        frames / sample_rate,
        sample_rate,
    )


def session_folds(manifest: pd.DataFrame) -> OuterFolds:
    """IEMOCAP's outer folds: one per session present, testing that session."""
    sessions = sorted(int(k) for k in manifest.session.unique())
    return OuterFolds("loso", {k: [SESSIONS[k - 1]] for k in sessions})
