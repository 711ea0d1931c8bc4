"""Parquet shards: real wav files (soundfile) under tmp_path, real Parquet, no mocks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from turbo_ray.data.shard_writer import write_shards
from turbo_ray.data.shards import SHARD_SCHEMA, decode_audio, read_shard_manifest, resample
from turbo_ray.errors import ShardError

CLASSES = ("neutral", "happy", "angry", "sad")
RATE = 16_000


def make_wav(
    path: Path,
    seconds: float,
    seed: int,
    channels: int = 1,
    subtype: str = "PCM_16",
    rate: int = RATE,
) -> Path:
    rng = np.random.default_rng(seed)
    samples = rng.integers(-20_000, 20_000, size=(int(seconds * rate), channels), dtype=np.int16)
    sf.write(path, samples, rate, subtype=subtype)
    return path


@pytest.fixture
def manifest(tmp_path: Path) -> pd.DataFrame:
    """7 utterances over 2 sessions and 4 classes, in shuffled order (the shards order them)."""
    wavs = tmp_path / "wav"
    wavs.mkdir()
    rows = []
    for i in range(7):
        session, label = 1 + i % 2, CLASSES[i % 4]
        uid = f"Ses0{session}F_impro01_{'FM'[i % 2]}{i:03d}"
        seconds = 0.05 + 0.01 * i
        rows.append(
            {
                "utterance_id": uid,
                "session": session,
                "speaker": f"Ses0{session}{'FM'[i % 2]}",
                "label": label,
                "label_id": CLASSES.index(label),
                "text": f"sentence {i}",
                "wav_path": str(make_wav(wavs / f"{uid}.wav", seconds, seed=i)),
                "duration": seconds,
                "sample_rate": RATE,
            }
        )
    return pd.DataFrame(rows).sample(frac=1, random_state=0).reset_index(drop=True)


def in_shard_order(manifest: pd.DataFrame) -> pd.DataFrame:
    """The documented row order of the shards: by sha256 of the utterance id."""
    key = manifest.utterance_id.map(lambda u: hashlib.sha256(u.encode()).hexdigest())
    return manifest.assign(key=key).sort_values("key").drop(columns="key").reset_index(drop=True)


def write(manifest: pd.DataFrame, out: Path | str, **kwargs) -> dict:
    return write_shards(
        manifest,
        str(out),
        classes=CLASSES,
        rows_per_shard=kwargs.pop("rows_per_shard", 3),
        **kwargs,
    )


def read_rows(out: Path) -> pd.DataFrame:
    return pd.concat(
        [pq.read_table(p).to_pandas() for p in sorted(out.glob("part-*.parquet"))],
        ignore_index=True,
    )


def mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


def test_wav_round_trip_is_byte_exact(manifest, tmp_path):
    out = tmp_path / "shards"
    doc = write(manifest, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "_manifest.json",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert [s["rows"] for s in doc["shards"]] == [3, 3, 1]
    for shard in out.glob("part-*.parquet"):
        assert pq.read_schema(shard).equals(SHARD_SCHEMA)
    rows = read_rows(out)
    expected = in_shard_order(manifest)
    assert rows.utterance_id.tolist() == expected.utterance_id.tolist()
    assert rows.utterance_id.tolist() != sorted(rows.utterance_id)  # never dialog (id) order
    assert (
        rows.label_id.tolist() == expected.label_id.tolist()
        and rows.text.tolist() == expected.text.tolist()
    )
    assert (rows.audio_format == "wav").all()
    for audio, wav in zip(rows.audio, expected.wav_path):
        assert audio == Path(wav).read_bytes()


def test_pcm16_matches_soundfile_and_decodes_like_wav(manifest, tmp_path):
    write(manifest, tmp_path / "wav_shards")
    write(manifest, tmp_path / "pcm_shards", audio_format="pcm16")
    wav_rows, pcm_rows = read_rows(tmp_path / "wav_shards"), read_rows(tmp_path / "pcm_shards")
    wav_paths = in_shard_order(manifest).wav_path
    for wav_row, pcm_row, path in zip(wav_rows.itertuples(), pcm_rows.itertuples(), wav_paths):
        assert pcm_row.audio == sf.read(path, dtype="int16")[0].tobytes()
        from_wav = decode_audio(wav_row.audio, "wav", wav_row.sample_rate)
        from_pcm = decode_audio(pcm_row.audio, "pcm16", pcm_row.sample_rate)
        assert from_wav.dtype == from_pcm.dtype == np.float32
        np.testing.assert_array_equal(from_wav, from_pcm)
        np.testing.assert_array_equal(from_wav, sf.read(path, dtype="float32")[0])


def test_pcm16_is_stored_resampled_to_the_encoder_rate(manifest, tmp_path):
    slow = manifest.assign(
        wav_path=[
            str(make_wav(tmp_path / f"{u}-8k.wav", 0.5, seed=i, rate=8000))
            for i, u in enumerate(manifest.utterance_id)
        ],
        sample_rate=8000,
    )
    doc = write(slow, tmp_path / "pcm_shards", audio_format="pcm16", sample_rate=RATE)
    assert doc["sample_rate"] == RATE
    rows = read_rows(tmp_path / "pcm_shards")
    assert (rows.sample_rate == RATE).all()  # the feed then has nothing to resample
    for row in rows.itertuples():
        source = sf.read(in_shard_order(slow).set_index("utterance_id").wav_path[row.utterance_id])
        expected = resample(source[0].astype(np.float32), 8000, RATE)
        stored = decode_audio(row.audio, "pcm16", row.sample_rate)
        assert len(stored) == len(expected) == 8000
        np.testing.assert_allclose(stored, expected, atol=1 / 32768)  # the pcm16 grid
    with pytest.raises(ValueError, match="pcm16 shards only"):
        write(slow, tmp_path / "wav_shards", audio_format="wav", sample_rate=RATE)


def test_json_manifest_counts_and_hashes(manifest, tmp_path):
    out = tmp_path / "shards"
    doc = write(manifest, out)
    assert doc == read_shard_manifest(str(out), verify=True)
    assert doc["num_rows"] == 7 and doc["classes"] == list(CLASSES) and doc["audio_format"] == "wav"
    assert doc["counts"]["label"] == {"angry": 2, "happy": 2, "neutral": 2, "sad": 1}
    assert doc["counts"]["session"] == {"1": 4, "2": 3}
    assert doc["counts"]["session_label"] == {
        "1": {"angry": 2, "neutral": 2},
        "2": {"happy": 2, "sad": 1},
    }
    assert doc["total_duration"] == pytest.approx(manifest.duration.sum())
    assert doc["schema"] == SHARD_SCHEMA.to_string()
    for shard in doc["shards"]:
        data = (out / shard["file"]).read_bytes()
        assert shard["bytes"] == len(data) and shard["sha256"] == hashlib.sha256(data).hexdigest()


def test_rerun_is_a_no_op_and_changed_input_rewrites(manifest, tmp_path):
    out = tmp_path / "shards"
    first = write(manifest, out, rows_per_shard=2)
    before = mtimes(out)
    assert write(manifest, out, rows_per_shard=2) == first
    assert mtimes(out) == before

    changed = manifest.assign(text=manifest.text + "!")
    second = write(changed, out, rows_per_shard=3)
    assert second["fingerprint"] != first["fingerprint"]
    assert sorted(p.name for p in out.iterdir()) == [
        "_manifest.json",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]  # part-00003 of the first run is gone
    assert read_rows(out).text.str.endswith("!").all()
    assert read_shard_manifest(str(out), verify=True) == second


@pytest.mark.parametrize("channels", [2, 3])
@pytest.mark.parametrize("audio_format", ["wav", "pcm16"])
def test_multichannel_audio_is_downmixed_to_mono(manifest, tmp_path, channels, audio_format):
    stereo = in_shard_order(manifest).iloc[2]
    make_wav(Path(stereo.wav_path), 0.05, seed=9, channels=channels)
    write(manifest, tmp_path / "shards", audio_format=audio_format)
    rows = read_rows(tmp_path / "shards").set_index("utterance_id")
    mono = decode_audio(rows.audio[stereo.utterance_id], audio_format, RATE)
    frames = sf.read(stereo.wav_path, dtype="float32")[0]
    assert frames.shape[1] == channels and mono.shape == (frames.shape[0],)
    np.testing.assert_allclose(
        mono, frames.mean(axis=1), atol=1 / 32768
    )  # pcm16 rounds to its grid
    other = in_shard_order(manifest).iloc[3]
    assert rows.audio[other.utterance_id] == (
        Path(other.wav_path).read_bytes()
        if audio_format == "wav"
        else sf.read(other.wav_path, dtype="int16")[0].tobytes()
    )


@pytest.mark.parametrize("bad", ["garbage", "pcm24", "rate"])
def test_failure_mid_write_leaves_nothing(manifest, tmp_path, bad):
    """The 7th utterance (3rd shard) passes validation but cannot be converted to pcm16."""
    last = in_shard_order(manifest).iloc[-1]
    path = Path(last.wav_path)
    if bad == "garbage":
        path.write_bytes(b"not a wav file at all" * 10)
    else:
        make_wav(
            path,
            0.05,
            seed=9,
            subtype="PCM_24" if bad == "pcm24" else "PCM_16",
            rate=8_000 if bad == "rate" else RATE,
        )
    out = tmp_path / "shards"
    with pytest.raises(ShardError, match=last.utterance_id) as err:
        write(manifest, out, audio_format="pcm16")
    assert str(path) in str(err.value)
    assert list(out.iterdir()) == []  # no part files, no temp files, no manifest


def test_failed_rewrite_keeps_the_previous_output(manifest, tmp_path):
    out = tmp_path / "shards"
    previous = write(manifest, out, audio_format="pcm16")
    before = mtimes(out)
    Path(in_shard_order(manifest).wav_path.iloc[-1]).write_bytes(b"garbage")
    with pytest.raises(ShardError):
        write(manifest, out, audio_format="pcm16")
    assert mtimes(out) == before
    assert read_shard_manifest(str(out), verify=True) == previous


def drop_column(m: pd.DataFrame) -> pd.DataFrame:
    return m.drop(columns="text")


def duplicate_id(m: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([m, m.iloc[[2]]], ignore_index=True)


def missing_wav(m: pd.DataFrame) -> pd.DataFrame:
    return m.assign(wav_path=m.wav_path.where(m.index != 4, "/nowhere/Ses09F_x.wav"))


def wrong_label_id(m: pd.DataFrame) -> pd.DataFrame:
    return m.assign(label_id=m.label_id.where(m.index != 1, 3 - m.label_id))


def unknown_label(m: pd.DataFrame) -> pd.DataFrame:
    return m.assign(label=m.label.where(m.index != 1, "fru"))


def missing_value(m: pd.DataFrame) -> pd.DataFrame:
    return m.assign(text=m.text.where(m.index != 3, None))


@pytest.mark.parametrize(
    "corrupt, named",
    [
        (drop_column, lambda m: "text"),
        (duplicate_id, lambda m: m.utterance_id[2]),
        (missing_wav, lambda m: "/nowhere/Ses09F_x.wav"),
        (wrong_label_id, lambda m: m.utterance_id[1]),
        (unknown_label, lambda m: m.utterance_id[1]),
        (missing_value, lambda m: m.utterance_id[3]),
    ],
)
def test_invalid_input_writes_nothing(manifest, tmp_path, corrupt, named):
    out = tmp_path / "shards"
    with pytest.raises(ShardError, match=named(manifest)):
        write(corrupt(manifest), out)
    assert not out.exists()


def test_file_uri_output_equals_plain_path(manifest, tmp_path):
    plain = write(manifest, tmp_path / "plain")
    via_uri = write(manifest, f"file://{tmp_path / 'uri'}")
    assert via_uri == plain  # same fingerprint, same shard bytes and hashes
    assert read_shard_manifest(str(tmp_path / "uri"), verify=True) == via_uri
    before = mtimes(tmp_path / "uri")
    assert (
        write(manifest, f"file://{tmp_path / 'uri'}") == via_uri
        and mtimes(tmp_path / "uri") == before
    )


def test_read_shard_manifest_catches_missing_and_corrupt_shards(manifest, tmp_path):
    out = tmp_path / "shards"
    with pytest.raises(ShardError, match="_manifest.json"):
        read_shard_manifest(str(out))
    write(manifest, out)
    shard = out / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 can tell
    shard.write_bytes(bytes(data))
    read_shard_manifest(str(out))
    with pytest.raises(ShardError, match="part-00001.parquet"):
        read_shard_manifest(str(out), verify=True)
    shard.write_bytes(bytes(data[:100]))
    with pytest.raises(ShardError, match="part-00001.parquet"):
        read_shard_manifest(str(out))
    assert (
        write(manifest, out)["shards"][1]["sha256"]
        == hashlib.sha256(shard.read_bytes()).hexdigest()
    )  # repaired


def test_decode_audio_rejects_inconsistent_audio(tmp_path):
    wav = make_wav(tmp_path / "a.wav", 0.05, seed=0).read_bytes()
    with pytest.raises(ShardError, match="8000 Hz"):
        decode_audio(wav, "wav", 8_000)
    with pytest.raises(ShardError, match="odd"):
        decode_audio(b"\x00\x01\x02", "pcm16", RATE)
    with pytest.raises(ShardError, match="unknown audio_format 'mp3'"):
        decode_audio(wav, "mp3", RATE)
