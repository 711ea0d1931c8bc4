"""The shard format and reading it: Parquet shards (audio bytes + text + label + session …) listed
by a JSON manifest, and the audio in a shard's cell. Written by `shard_writer.write_shards`.

    doc = read_shard_manifest("s3://bucket/iemocap", verify=True)
    files = shard_files("s3://bucket/iemocap")      # what a reader may read: the listed shards only
    # float32 mono in [-1, 1]
    wave = decode_audio(row["audio"], row["audio_format"], row["sample_rate"])

Layout: `out/part-00000.parquet`, `out/part-00001.parquet`, …, then `out/_manifest.json`,
written last. `out` is a local path or any pyarrow filesystem URI (`file://`, `s3://`, `gs://` …).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import soundfile as sf

from turbo_ray.config import AUDIO_FORMATS
from turbo_ray.errors import ShardError
from turbo_ray.paths import filesystem

SHARD_SCHEMA = pa.schema(
    [
        ("utterance_id", pa.string()),
        ("session", pa.int8()),
        ("speaker", pa.string()),
        ("label_id", pa.int16()),
        ("label", pa.string()),
        ("text", pa.string()),
        ("audio", pa.binary()),
        ("audio_format", pa.string()),
        ("sample_rate", pa.int32()),
        ("duration", pa.float32()),
    ]
)
ROWS_PER_SHARD = 64  # a shard is one Ray Data block: the unit the training order permutes
MANIFEST = "_manifest.json"
FORMAT_VERSION = 2  # 2: rows in hashed order, multi-channel audio down-mixed


def read_shard_manifest(out: str, verify: bool = False) -> dict:
    """The JSON manifest under `out`, after checking every listed shard exists with its recorded
    size (and, with `verify`, its sha256). ShardError if the manifest is missing or any shard is
    missing or corrupt."""
    fs, root = filesystem(out)
    path = f"{root}/{MANIFEST}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise ShardError(f"{out}: no {MANIFEST}; the shards are missing or incomplete")
    with fs.open_input_stream(path) as f:
        try:
            doc = json.loads(f.read())
        except json.JSONDecodeError as e:
            raise ShardError(f"{path}: not valid JSON ({e})") from e
    if doc.get("format_version") != FORMAT_VERSION:
        raise ShardError(
            f"{path}: format_version {doc.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    paths = [f"{root}/{shard['file']}" for shard in doc["shards"]]
    for shard, path, info in zip(doc["shards"], paths, fs.get_file_info(paths)):
        if info.type != pafs.FileType.File or info.size != shard["bytes"]:
            raise ShardError(
                f"shard {path} is missing or has the wrong size (expected {shard['bytes']} bytes)"
            )
        if verify and _sha256(fs, path) != shard["sha256"]:
            raise ShardError(f"shard {path} is corrupt: its sha256 differs from {MANIFEST}")
    return doc


def shard_files(out: str) -> list[str]:
    """The shard files `out`'s manifest lists (checked to exist, see `read_shard_manifest`), as
    paths or URIs a reader takes; a stray file beside them is never read."""
    return [f"{out.rstrip('/')}/{shard['file']}" for shard in read_shard_manifest(out)["shards"]]


def decode_audio(audio: bytes, audio_format: str, sample_rate: int) -> np.ndarray:
    """A shard's `audio` cell as a float32 mono waveform in [-1, 1].

    `sample_rate` is the row's rate: a "wav" whose header disagrees with it (or that is not mono) is
    a ShardError; "pcm16" samples carry no header and are at that rate by construction.
    """
    if audio_format == "wav":
        frames = read_audio(audio, sample_rate, "float32", "wav audio")
        if frames.shape[1] != 1:
            raise ShardError(f"wav audio has {frames.shape[1]} channels; shards hold mono audio")
        return frames[:, 0]
    if audio_format == "pcm16":
        if len(audio) % 2:
            raise ShardError(f"pcm16 audio has an odd number of bytes ({len(audio)})")
        return np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768
    raise ShardError(f"unknown audio_format {audio_format!r} in a shard (known: {AUDIO_FORMATS})")


def resample(wave: np.ndarray, source: int, target: int) -> np.ndarray:
    """`wave` from `source` Hz to `target` Hz (torchaudio's sinc filter, built once per process
    and rate pair). The input is zero-padded to whole seconds and the output cut back to its exact
    length: the convolution then meets a dozen lengths instead of a new one per utterance (oneDNN
    prepares a kernel per input shape, which cost 2x the resampling; the filter already treats
    the end as zeros, so the samples kept are the same)."""
    import torch

    padded = np.pad(wave, (0, -len(wave) % source))
    out = _resampler(source, target)(torch.from_numpy(padded))
    return out[: math.ceil(len(wave) * target / source)].numpy()


@functools.lru_cache(maxsize=8)
def _resampler(source: int, target: int):
    import torchaudio.transforms

    return torchaudio.transforms.Resample(source, target)


def read_audio(
    data: bytes, sample_rate: int, dtype: str, where: str, pcm16_only: bool = False
) -> np.ndarray:
    """Decode audio file bytes at `sample_rate` (16-bit PCM with `pcm16_only`)
    to (frames, channels)."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            if f.samplerate != sample_rate or (pcm16_only and f.subtype != "PCM_16"):
                raise ShardError(
                    f"{where}: expected {'16-bit PCM ' if pcm16_only else ''}"
                    f"audio at {sample_rate} Hz, "
                    f"got {f.subtype} at {f.samplerate} Hz"
                )
            return f.read(dtype=dtype, always_2d=True)
    except sf.SoundFileError as e:
        raise ShardError(f"{where}: unreadable audio ({e})") from e


def _sha256(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 23):
            digest.update(chunk)
    return digest.hexdigest()
