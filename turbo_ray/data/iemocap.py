"""Parse an IEMOCAP_full_release folder into a manifest (one row per utterance).

    # problems in df.attrs["report"]
    df = load_manifest("/data/IEMOCAP_full_release", ClassMap.parse("all"))  # default: 4class

The layout and the parsing rules are those of the release (README: Data). Anything that does not
fit them is reported (`CorpusReport`) and the utterance left out: a wrong or missing label is never
guessed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd
import soundfile as sf

from turbo_ray.data.classes import ClassMap
from turbo_ray.errors import CorpusError

RELEASE_NAME = "IEMOCAP_full_release"
SESSIONS = tuple(f"Session{n}" for n in range(1, 6))
RAW_LABELS = ("neu", "hap", "exc", "ang", "sad", "fru", "fea", "sur", "dis", "oth", "xxx")
LONG_NAMES = dict(zip(RAW_LABELS, ClassMap.parse("all").names))  # raw label -> its long name
DEFAULT_CLASSES = ClassMap.parse("4class")  # data.classes unset
COLUMNS = (
    "utterance_id",
    "session",
    "dialog",
    "speaker",
    "gender",
    "label",
    "label_id",
    "label_raw",
    "text",
    "wav_path",
    "start",
    "end",
    "valence",
    "activation",
    "dominance",
    "duration",
    "sample_rate",
)
DTYPES = {
    "session": "int64",
    "label_id": "int64",
    "sample_rate": "int64",
    **dict.fromkeys(("start", "end", "valence", "activation", "dominance", "duration"), "float64"),
}

SUMMARY_LINE = re.compile(
    r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(\S+)\t([a-z]{3})\t"
    r"\[(\d\.\d{4}), (\d\.\d{4}), (\d\.\d{4})\]$"
)
INFO_FIELDS = (
    "excluded",
    "downmixed",
    "untested",
)  # CorpusReport fields that are information, not problems
UTTERANCE_ID = re.compile(r"^Ses0[1-5][FM]_(impro0[1-8][ab]?|script0[1-3]_[1-3]b?)_[FM]\d{3}$")


@dataclass
class CorpusReport:
    """What the scan found wrong (utterance ids, or "path:line: text"), and what the class set
    left out."""

    label_without_wav: list[str] = field(default_factory=list)
    missing_audio: list[str] = field(default_factory=list)  # "path:line: file" (metadata.csv)
    wav_without_label: list[str] = field(default_factory=list)
    unreadable_wav: list[str] = field(default_factory=list)
    missing_transcription: list[str] = field(default_factory=list)
    unknown_label: list[str] = field(default_factory=list)
    malformed_lines: list[str] = field(default_factory=list)
    # "path:line": not UTF-8 (kept, bytes replaced)
    undecodable_text: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    # "id: path, path": left out, never guessed
    duplicate_wavs: list[str] = field(default_factory=list)
    # "path: class 'x': …": a class whose every row is unusable (metadata.csv)
    empty_class: list[str] = field(default_factory=list)
    # "class 'x': n utterance(s) …": far fewer than the largest class (a typo?), with its lines
    rare_class: list[str] = field(default_factory=list)
    # "fold k (tests g): no 'x' …": a class that an outer fold cannot train on
    class_not_trained: list[str] = field(default_factory=list)
    # raw label -> utterances outside the class set (info)
    excluded: dict[str, int] = field(default_factory=dict)
    # multi-channel wavs, down-mixed to mono in the shards (info)
    downmixed: list[str] = field(default_factory=list)
    # "fold k (tests g): no 'x'": a class an outer fold's test data lacks (info: its UA averages
    # the other classes' recalls)
    untested: list[str] = field(default_factory=list)

    def problems(self) -> dict[str, list[str]]:
        """The non-empty problem lists, by name."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in INFO_FIELDS and getattr(self, f.name)
        }

    def refuse(self, source: Path) -> None:
        """--strict: any problem is a CorpusError naming them."""
        if problems := self.problems():
            listed = "; ".join(f"{kind}: {', '.join(items)}" for kind, items in problems.items())
            count = sum(map(len, problems.values()))
            raise CorpusError(f"{source}: {count} problem(s) (--strict): {listed}")

    def summary(self, limit: int = 10) -> str:
        """Counts, and the first `limit` entries of each problem."""
        problems = self.problems()
        lines = [f"{sum(map(len, problems.values()))} problem(s)" if problems else "no problems"]
        for name, items in problems.items():
            lines.append(f"  {name}: {len(items)}")
            lines += [f"    {item}" for item in items[:limit]]
            if len(items) > limit:
                lines.append(f"    … and {len(items) - limit} more")
        if self.excluded:
            counts = ", ".join(f"{raw} {n}" for raw, n in sorted(self.excluded.items()))
            lines.append(f"  outside the class set (left out, not a problem): {counts}")
        if self.downmixed:
            lines.append(
                f"  multi-channel wavs down-mixed to mono: {len(self.downmixed)}: "
                f"{', '.join(self.downmixed[:limit])}{' …' if len(self.downmixed) > limit else ''}"
            )
        if self.untested:
            lines.append(
                f"  classes a fold cannot test (not a problem): {'; '.join(self.untested)}"
            )
        return "\n".join(lines)


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
        "(or, for another corpus, a metadata.csv: README, Your own data)"
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


def wav_info(path: Path) -> tuple[int, int, int] | None:
    """(frames, sample rate, channels) of a readable, non-empty wav, or None."""
    try:
        info = sf.info(str(path))
    except sf.SoundFileError:
        return None
    return (info.frames, info.samplerate, info.channels) if info.frames > 0 else None


def scan_corpus(
    root: str | Path, classes: ClassMap = DEFAULT_CLASSES
) -> tuple[pd.DataFrame, CorpusReport]:
    """The manifest of the usable utterances whose label is in `classes`, and the report of
    everything else."""
    release = release_dir(root)
    sessions = [release / s for s in SESSIONS if (release / s).is_dir()]
    report = CorpusReport()
    labels, duplicate_labels = _parse_labels(
        [f for s in sessions for f in _visible(s / "dialog" / "EmoEvaluation", ".txt")], report
    )
    texts, duplicate_texts = _parse_transcriptions(
        [f for s in sessions for f in _visible(s / "dialog" / "transcriptions", ".txt")], report
    )
    wav_paths: dict[str, list[Path]] = {}
    for w in (
        w for s in sessions for d in _visible(s / "sentences" / "wav") for w in _visible(d, ".wav")
    ):
        wav_paths.setdefault(w.stem, []).append(w)
    wavs = {utt: paths[0] for utt, paths in wav_paths.items() if len(paths) == 1}
    report.duplicate_wavs = [
        f"{utt}: {', '.join(map(str, paths))}"
        for utt, paths in sorted(wav_paths.items())
        if len(paths) > 1
    ]
    duplicates = duplicate_labels | duplicate_texts | (set(wav_paths) - set(wavs))
    report.duplicate_ids = sorted(duplicate_labels | duplicate_texts)
    report.unknown_label = sorted(
        u for u, lab in labels.items() if lab.raw not in RAW_LABELS and u not in duplicates
    )
    report.wav_without_label = sorted(set(wav_paths) - set(labels))

    rows, excluded = [], Counter()
    for utt in sorted(set(labels) - duplicates - set(report.unknown_label)):
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
        (frames, sample_rate, channels), (dialog, turn) = info, utt.rsplit("_", 1)
        if channels > 1:
            report.downmixed.append(utt)
        rows.append(
            (
                utt,
                int(utt[3:5]),
                dialog,
                utt[:5] + turn[0],
                turn[0],
                name,
                classes.names.index(name),
                label.raw,
                texts[utt],
                str(wav),
                label.start,
                label.end,
                label.valence,
                label.activation,
                label.dominance,
                frames / sample_rate,
                sample_rate,
            )
        )
    report.excluded = dict(sorted(excluded.items()))
    manifest = pd.DataFrame(rows, columns=list(COLUMNS)).astype(DTYPES)
    return manifest, report


def load_manifest(
    root: str | Path, classes: ClassMap = DEFAULT_CLASSES, strict: bool = False
) -> pd.DataFrame:
    """`scan_corpus`'s manifest with its report in `df.attrs["report"]`; `strict`: any problem
    is a CorpusError."""
    manifest, report = scan_corpus(root, classes)
    if strict:
        report.refuse(release_dir(root))
    manifest.attrs["report"] = report
    return manifest
