"""What every corpus reader returns: the manifest, one row per usable utterance (`COLUMNS`, typed
by `DTYPES`), and a `CorpusReport` of everything left out and why.

    manifest, report = read_iemocap(root)          # or read_audiofolder(…): the same two first
    print(report.summary())

The column `session` holds the outer fold that tests the row: an IEMOCAP session, a group of a
metadata.csv corpus or a fold of whole groups (the name stays: the shards and results keep it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import soundfile as sf

from turbo_ray.config.classes import ClassMap
from turbo_ray.data.folds import OuterFolds
from turbo_ray.errors import CorpusError

COLUMNS = (
    "utterance_id",
    "session",  # the outer fold that tests the row
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
INFO_FIELDS = (
    "excluded",
    "downmixed",
    "untested",
)  # CorpusReport fields that are information, not problems


@dataclass
class CorpusReport:
    """What a reader found wrong (utterance ids, or "path:line: text"), and what the class set
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


class Parsed(NamedTuple):
    """A corpus as read: its manifest and report, the classes its `label_id`s index, and how its
    rows are cut into outer folds."""

    manifest: pd.DataFrame
    report: CorpusReport
    classes: ClassMap
    outer: OuterFolds


def wav_info(path: Path) -> tuple[int, int, int] | None:
    """(frames, sample rate, channels) of a readable, non-empty audio file, or None."""
    try:
        info = sf.info(str(path))
    except sf.SoundFileError:
        return None
    return (info.frames, info.samplerate, info.channels) if info.frames > 0 else None
