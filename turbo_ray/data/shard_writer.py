"""Manifest → Parquet shards, atomic and idempotent (the format: `shards.py`).

    doc = write_shards(manifest, "s3://bucket/iemocap", audio_format="wav", classes=classes)

`out` (and every wav_path) is a local path or any pyarrow filesystem URI. Every file is written
under a hidden temporary name (readers such as Ray Data skip names starting with `.` or `_`) and
renamed into place only once all shards are complete; an error removes this run's files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import soundfile as sf
from tqdm import tqdm

from turbo_ray.data.shards import (
    FORMAT_VERSION,
    MANIFEST,
    ROWS_PER_SHARD,
    SHARD_SCHEMA,
    read_audio,
    read_shard_manifest,
    resample,
)
from turbo_ray.errors import ShardError
from turbo_ray.paths import filesystem

REQUIRED_COLUMNS = (
    "utterance_id",
    "session",
    "speaker",
    "label",
    "label_id",
    "text",
    "wav_path",
    "duration",
    "sample_rate",
)


def write_shards(
    manifest: pd.DataFrame,
    out: str,
    audio_format: str = "wav",
    rows_per_shard: int = ROWS_PER_SHARD,
    classes: Sequence[str] | None = None,
    sample_rate: int | None = None,
) -> dict:
    """Write the manifest's utterances to Parquet shards under `out`; return the JSON manifest.
    With "pcm16", `sample_rate` (the encoder's) resamples every utterance once, here, so that the
    training feed has nothing to resample; "wav" keeps the files' bytes and rates.

    Rows go in a fixed pseudo-random order (by a hash of the utterance id), so every shard mixes
    outer folds, dialogs and speakers: utterance-id order would put one dialog in each run of rows.
    Multi-channel wavs are down-mixed to mono here (the corpus report lists them).

    All inputs are validated before anything is written. If `out` already holds a complete output
    of the same input (same fingerprint) it is returned untouched; otherwise it is replaced, stale
    shards removed.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    if sample_rate is not None and audio_format != "pcm16":
        raise ValueError(f"sample_rate resamples pcm16 shards only, not {audio_format!r}")
    rows = _validate(manifest, classes)
    wav_infos = _stat_wavs(rows.wav_path.tolist())
    options = [audio_format, rows_per_shard, sample_rate]
    fingerprint = _fingerprint(rows, wav_infos, options, classes)
    existing = _complete_manifest(out)
    fs, root = filesystem(out)
    if existing is not None and existing["fingerprint"] == fingerprint:
        return existing
    fs.create_dir(root, recursive=True)
    files = _RunFiles(fs, root)
    try:
        shards = _write_temp_shards(files, rows, rows_per_shard, audio_format, sample_rate)
        # from here until the new manifest lands, `out` reads as incomplete
        _delete(fs, [f"{root}/{MANIFEST}"])
        for shard in shards:
            files.place(shard["file"])
        _delete(fs, _stale_shards(fs, root, keep=len(shards)))
        doc = _shards_doc(fingerprint, rows, shards, options, classes)
        files.write(MANIFEST, json.dumps(doc, indent=1).encode())
        files.place(MANIFEST)
    except BaseException:
        files.discard()
        raise
    return doc


class _RunFiles:
    """This run's files under `root`: each written under a hidden temporary name, then moved into
    place; `discard` deletes every one of them (after an error)."""

    def __init__(self, fs: pafs.FileSystem, root: str):
        self.fs, self.root = fs, root
        # the pid alone can repeat across cluster nodes
        self.token = f"tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.temps: list[str] = []
        self.placed: list[str] = []

    def _temp(self, name: str) -> str:
        return f"{self.root}/.{name}.{self.token}"

    def write(self, name: str, data: bytes | pa.Buffer) -> None:
        self.temps.append(self._temp(name))
        _write_bytes(self.fs, self.temps[-1], data)

    def place(self, name: str) -> None:
        self.fs.move(self._temp(name), f"{self.root}/{name}")
        self.placed.append(f"{self.root}/{name}")

    def discard(self) -> None:
        _delete(self.fs, self.temps + self.placed)


def _write_temp_shards(
    files: _RunFiles,
    rows: pd.DataFrame,
    rows_per_shard: int,
    audio_format: str,
    sample_rate: int | None,
) -> list[dict]:
    """Every shard, written under its temporary name; their manifest entries."""
    shards: list[dict] = []
    starts = range(0, len(rows), rows_per_shard)
    for start in tqdm(starts, desc="writing shards", unit="shard", disable=None, leave=False):
        name = f"part-{len(shards):05d}.parquet"
        part = rows.iloc[start : start + rows_per_shard]
        data = _shard_bytes(part, audio_format, sample_rate)
        files.write(name, data)
        shards.append(
            {
                "file": name,
                "rows": len(part),
                "bytes": data.size,
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    return shards


def _shards_doc(
    fingerprint: str,
    rows: pd.DataFrame,
    shards: list[dict],
    options: list,
    classes: Sequence[str] | None,
) -> dict:
    """The JSON manifest of the shards (`options`: audio format, rows per shard, sample rate)."""
    audio_format, rows_per_shard, sample_rate = options
    return {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "audio_format": audio_format,
        "sample_rate": sample_rate,
        "rows_per_shard": rows_per_shard,
        "classes": list(classes) if classes is not None else None,
        "num_rows": len(rows),
        "counts": _counts(rows),
        "total_duration": float(rows.duration.sum()),
        "shards": shards,
        "schema": SHARD_SCHEMA.to_string(),
    }


def _some(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(map(str, names[:limit])) + (
        f" … (+{len(names) - limit} more)" if len(names) > limit else ""
    )


def _reject(bad: pd.Series, rows: pd.DataFrame, what: str) -> None:
    if bad.any():
        ids = rows.utterance_id[bad].tolist()
        raise ShardError(f"{len(ids)} utterance(s) {what}: {_some(ids)}")


def _validate(manifest: pd.DataFrame, classes: Sequence[str] | None) -> pd.DataFrame:
    """The required columns in shard order (hashed ids), once they pass every check."""
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise ShardError(f"the manifest lacks column(s) {missing}")
    if manifest.empty:
        raise ShardError("the manifest has no rows")
    rows = manifest[list(REQUIRED_COLUMNS)]
    rows = rows.sort_values("utterance_id", key=lambda ids: ids.map(_row_key)).reset_index(
        drop=True
    )
    _reject(rows.isna().any(axis=1), rows, "have missing values")
    _reject(rows.utterance_id.duplicated(keep=False), rows, "have duplicate ids")
    if classes is not None:
        expected = rows.label.map({c: i for i, c in enumerate(classes)})
        _reject(
            expected != rows.label_id,
            rows,
            f"have a label_id other than {list(classes)}.index(label)",
        )
    _reject(
        rows.groupby("label").label_id.transform("nunique") > 1,
        rows,
        "share a label with other label_ids",
    )
    return rows


def _row_key(utterance_id: str) -> str:
    return hashlib.sha256(utterance_id.encode()).hexdigest()


def _stat_wavs(paths: list[str]) -> list[pafs.FileInfo]:
    infos = [fs.get_file_info(path) for fs, path in map(filesystem, paths)]
    missing = [p for p, info in zip(paths, infos) if info.type != pafs.FileType.File]
    if missing:
        raise ShardError(f"{len(missing)} wav file(s) do not exist: {_some(missing)}")
    return infos


def _fingerprint(
    rows: pd.DataFrame,
    wav_infos: list[pafs.FileInfo],
    options: list,
    classes: Sequence[str] | None,
) -> str:
    """sha256 over every stored field, the wav files' sizes and mtimes, and the write options."""
    options = [FORMAT_VERSION, *options, list(classes) if classes is not None else None]
    digest = hashlib.sha256(json.dumps(options).encode())
    digest.update(rows.to_json(orient="values").encode())
    digest.update(json.dumps([[info.size, info.mtime_ns] for info in wav_infos]).encode())
    return digest.hexdigest()


def _complete_manifest(out: str) -> dict | None:
    """The existing manifest if `out` holds a complete output;
    None (so it gets rewritten) otherwise."""
    try:
        return read_shard_manifest(out)
    except ShardError:
        return None


def audio_cell(row: tuple, audio_format: str, sample_rate: int | None) -> bytes:
    """The `audio` cell of a manifest row (a namedtuple): the wav file's bytes, or its int16
    samples (resampled to `sample_rate` if given). Multi-channel audio is down-mixed to mono (the
    channels' mean; a float wav in the "wav" format)."""
    where = f"{row.wav_path} (utterance {row.utterance_id})"
    fs, path = filesystem(row.wav_path)
    try:
        with fs.open_input_stream(path) as f:
            data = f.read()
    except OSError as e:
        raise ShardError(f"{where}: cannot read ({e})") from e
    return encoded_cell(data, int(row.sample_rate), audio_format, sample_rate, where)


def encoded_cell(
    data: bytes, rate: int, audio_format: str, sample_rate: int | None, where: str
) -> bytes:
    """`audio_cell` of an audio file's bytes `data` recorded at `rate` (`where`: what the errors
    name)."""
    if audio_format == "pcm16":
        frames = read_audio(data, rate, "int16", where, pcm16_only=True)
        mono = frames[:, 0] if frames.shape[1] == 1 else np.round(frames.mean(axis=1))
        if sample_rate and sample_rate != rate:
            wave = resample(mono.astype(np.float32) / 32768, rate, sample_rate)
            mono = np.clip(np.round(wave * 32768), -32768, 32767)
        return mono.astype("<i2").tobytes()
    frames = read_audio(data, rate, "float32", where)
    if frames.shape[1] == 1:
        return data
    out = io.BytesIO()
    sf.write(out, frames.mean(axis=1), rate, format="WAV", subtype="FLOAT")
    return out.getvalue()


def _shard_bytes(rows: pd.DataFrame, audio_format: str, sample_rate: int | None) -> pa.Buffer:
    """One shard's Parquet file."""
    columns = {c: rows[c].tolist() for c in SHARD_SCHEMA.names if c in rows.columns}
    columns["audio"] = [
        audio_cell(row, audio_format, sample_rate) for row in rows.itertuples(index=False)
    ]
    columns["audio_format"] = [audio_format] * len(rows)
    if sample_rate:
        columns["sample_rate"] = [sample_rate] * len(rows)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns, schema=SHARD_SCHEMA), sink)
    return sink.getvalue()


def _write_bytes(fs: pafs.FileSystem, path: str, data: bytes | pa.Buffer) -> None:
    with fs.open_output_stream(path) as f:
        f.write(data)


def _stale_shards(fs: pafs.FileSystem, root: str, keep: int) -> list[str]:
    """`part-*.parquet` files other than part-00000 … part-{keep-1}:
    shards of an earlier, larger output."""
    current = {f"part-{i:05d}.parquet" for i in range(keep)}
    return [
        info.path
        for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        if info.base_name.startswith("part-")
        and info.base_name.endswith(".parquet")
        and info.base_name not in current
    ]


def _counts(rows: pd.DataFrame) -> dict:
    def count(values: pd.Series) -> dict[str, int]:
        return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}

    return {
        "label": count(rows.label),
        "session": count(rows.session),
        "session_label": {str(s): count(group.label) for s, group in rows.groupby("session")},
    }


def _delete(fs: pafs.FileSystem, paths: list[str]) -> None:
    for path in paths:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_file(path)
