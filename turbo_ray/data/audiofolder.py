"""A corpus in Hugging Face's `audiofolder` layout: audio files under a folder and, beside them, a
`metadata.csv` (or `metadata.parquet`) with a row per utterance.

    file_name,text,label,speaker,group
    clips/a1.wav,hey computer turn the lights on,directed,spk01,kitchen

    manifest, report, classes, outer = read_audiofolder("/data/dds", None, folds=None, seed=0)

Columns: `file_name` (the audio, relative to the folder), `text`, `label`; optional `speaker`,
`group` (recording, room, site: the outer folds leave one group out, or `folds` of them) and
`split` (train / validation / test: one outer fold, as given). A row that does not fit is reported
by its line and left out: a wrong label is never guessed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from turbo_ray.config.classes import ClassMap
from turbo_ray.data.folds import OuterFolds, group_folds
from turbo_ray.data.manifest import COLUMNS, DTYPES, CorpusReport, Parsed, wav_info
from turbo_ray.errors import CorpusError

METADATA = ("metadata.csv", "metadata.parquet")
REQUIRED = ("file_name", "text", "label")
OPTIONAL = ("speaker", "group", "split")
SPLITS = ("train", "validation", "test")
MANIFEST_COLUMNS = (*COLUMNS, "group", "split")  # every manifest's, and where a row belongs
MAX_FOLDS = 127  # the shards keep a row's outer fold in an int8
RARE = 0.05  # a class under this share of the largest one's utterances is reported


def metadata_file(root: Path) -> Path | None:
    """The folder's metadata.csv or metadata.parquet, if it has one."""
    return next((root / name for name in METADATA if (root / name).is_file()), None)


def _records(path: Path) -> tuple[list[str], Iterator[tuple[str, list | str]]]:
    """The header and, per row, (where: "path:line", its fields, or why it has none)."""
    if path.suffix == ".parquet":
        table = pd.read_parquet(path).astype(str)
        rows = ((f"{path}: row {i}", list(r)) for i, r in enumerate(table.values.tolist(), 1))
        return list(table.columns), rows
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise CorpusError(f"{path}: not UTF-8 at byte {err.start}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip() for name in next(reader, [])]

    def rows():
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                yield f"{path}:{reader.line_num}", f"not CSV: {err}"
                continue
            if fields:  # blank lines
                yield f"{path}:{reader.line_num}", fields

    return header, rows()


def read_audiofolder(
    root: Path, classes: str | None, folds: int | None, seed: int, strict: bool = False
) -> Parsed:
    """The manifest of the folder's usable rows (`COLUMNS` plus `group` and `split`; `session`:
    the outer fold that tests the row), its report, its classes and its outer folds.
    `classes`: `data.classes` (None: every label, sorted); `strict`: any problem is a
    CorpusError."""
    path = metadata_file(root)
    header, records = _records(path)
    _check_header(path, header)
    report = CorpusReport()
    rows = _distinct_rows(header, records, report)
    labels = (row["label"] for _, row in rows)
    class_map = ClassMap.parse(classes) if classes else ClassMap.of_labels(labels)
    usable = [_usable(root, where, row, class_map, report) for where, row in rows]
    label = MANIFEST_COLUMNS.index("label")
    present = {r[label] for r in usable if r}
    report.empty_class = [
        f"{path}: class {name!r}: none of its rows is usable"
        for name in class_map.names
        if name not in present
    ]
    if not classes:  # the labels of the usable rows: no class without utterances
        class_map = ClassMap.of_labels(present)
    manifest = pd.DataFrame([r for r in usable if r], columns=MANIFEST_COLUMNS).astype(DTYPES)
    manifest["label_id"] = manifest.label.map(class_map.names.index).astype(DTYPES["label_id"])
    where = f"{path} ({report.summary().splitlines()[0]} left out)"
    outer = _cut(manifest, "split" in header, folds, seed, where)
    _doubtful_classes(manifest, outer, {row["file_name"]: w for w, row in rows}, report)
    if strict:
        report.refuse(path)
    return Parsed(manifest, report, class_map, outer)


def _check_header(path: Path, header: list[str]) -> None:
    """A CorpusError unless the header names the required columns and `group` or `split`."""
    if missing := [c for c in REQUIRED if c not in header]:
        raise CorpusError(f"{path}: no column {missing[0]!r} (the header must name {REQUIRED})")
    if "split" not in header and "group" not in header:
        raise CorpusError(
            f"{path}: needs a `group` column (the outer folds leave one group out) or a `split` "
            "column (train / validation / test)"
        )


def _doubtful_classes(
    manifest: pd.DataFrame, outer: OuterFolds, lines: dict[str, str], report: CorpusReport
) -> None:
    """Report the classes that look like mistakes: one with far fewer utterances than the
    largest (a typo in a label?), with its lines; one that some outer fold cannot train on. And,
    as information, the classes an outer fold cannot test."""
    counts = manifest.label.value_counts()
    for name, n in counts.items():
        if n < RARE * counts.max():
            ids = manifest.utterance_id[manifest.label == name]
            report.rare_class.append(
                f"class {name!r}: {n} utterance(s) against {counts.max()} of "
                f"{counts.idxmax()!r} (a typo?): {', '.join(lines[i] for i in ids[:5])}"
            )
    for fold, tested in outer.groups.items():
        split = outer.kind == "split"
        trained = manifest.split == "train" if split else manifest.session != fold
        testing = manifest.split == "test" if split else manifest.session == fold
        where = f"fold {fold} (tests {', '.join(tested)})"
        for name in sorted(set(counts.index) - set(manifest.label[trained])):
            report.class_not_trained.append(f"{where}: no {name!r} utterance to train on")
        if untested := sorted(set(counts.index) - set(manifest.label[testing])):
            report.untested.append(f"{where}: no {', '.join(map(repr, untested))}")


def _distinct_rows(header: list[str], records, report: CorpusReport) -> list[tuple[str, dict]]:
    """(where, row) of every well-formed row whose file_name no other row names; the rest
    reported."""
    rows, lines = [], {}
    for where, fields in records:
        if isinstance(fields, str) or len(fields) != len(header):
            why = fields if isinstance(fields, str) else f"{len(fields)} fields, not {len(header)}"
            report.malformed_lines.append(f"{where}: {why}")
            continue
        row = {k: v.strip() for k, v in zip(header, fields) if k in REQUIRED + OPTIONAL}
        if problem := _row_problem(row, header):
            report.malformed_lines.append(f"{where}: {problem}")
            continue
        lines.setdefault(row["file_name"], []).append(where)
        rows.append((where, row))
    report.duplicate_ids = [
        f"{wheres[0]}: {name} again at {', '.join(w.rsplit(':', 1)[-1] for w in wheres[1:])}"
        for name, wheres in lines.items()
        if len(wheres) > 1
    ]
    return [(where, row) for where, row in rows if len(lines[row["file_name"]]) == 1]


def _usable(
    root: Path, where: str, row: dict, classes: ClassMap, report: CorpusReport
) -> tuple | None:
    """The row in the manifest's columns, or None with every reason reported: its audio missing
    or unreadable, its text empty, its label in no class."""
    audio = root / row["file_name"]
    info = wav_info(audio) if audio.is_file() else None
    if not audio.is_file():
        report.missing_audio.append(f"{where}: {row['file_name']}")
    elif info is None:
        report.unreadable_wav.append(f"{where}: {row['file_name']}")
    if not row["text"]:
        report.missing_transcription.append(f"{where}: {row['file_name']}")
    name = classes.of(row["label"])
    if name is None:
        report.unknown_label.append(
            f"{where}: label {row['label']!r} is in no class of {classes.spec()}"
        )
    if info is None or not row["text"] or name is None:
        return None
    frames, rate, channels = info
    if channels > 1:
        report.downmixed.append(row["file_name"])
    values = {
        "utterance_id": row["file_name"],
        "session": 1,  # the outer fold, set by `_cut`
        "dialog": row.get("group", ""),
        "speaker": row.get("speaker", ""),
        "gender": "",
        "label": name,
        "label_id": -1,  # its index in the class set, once that is known (`read_audiofolder`)
        "label_raw": row["label"],
        "text": row["text"],
        "wav_path": str(audio),
        "duration": frames / rate,
        "sample_rate": rate,
        "group": row.get("group", ""),
        "split": row.get("split", ""),
    }  # no dialog times or annotator ratings: NaN
    return tuple(values.get(column, np.nan) for column in MANIFEST_COLUMNS)


def _row_problem(row: dict, header: list[str]) -> str | None:
    """Why a row cannot be read at all (an empty file name, label, speaker or group, a split
    that is not one of `SPLITS`), or None."""
    for key in ("file_name", "label", "speaker", "group"):
        if key in row and not row[key]:
            return f"empty {key}"
    if "split" in header and row["split"] not in SPLITS:
        return f"split {row['split']!r} is not one of {', '.join(SPLITS)}"
    return None


def _cut(
    manifest: pd.DataFrame, has_split: bool, folds: int | None, seed: int, path: str
) -> OuterFolds:
    """The outer folds: the given split, or one per group (or `folds` of whole groups); sets
    each row's `session` to the outer fold that tests it."""
    if has_split:
        if not (manifest.split == "test").any() or not (manifest.split == "train").any():
            raise CorpusError(f"{path}: the split column needs train and test rows")
        return OuterFolds("split", {1: ["test"]})
    try:
        fold_of_row, groups = group_folds(manifest["group"], folds, seed)
    except ValueError as err:
        raise CorpusError(f"{path}: {err}") from None
    if not 2 <= len(groups) <= MAX_FOLDS:
        raise CorpusError(
            f"{path}: {len(groups)} usable group(s); leave-one-group-out needs 2 to "
            f"{MAX_FOLDS} (with more, set data.folds=K, e.g. 5)"
        )
    manifest["session"] = fold_of_row
    return OuterFolds("logo" if folds is None else "group-kfold", groups)
