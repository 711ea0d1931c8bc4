"""Ray Data pipeline: real Parquet shards → preprocessing → padded batches; each epoch's training
rows dealt to the ranks by seed and epoch."""

import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import soundfile as sf
import torch

from turbo_ray.config import load_config
from turbo_ray.data.pipeline import TrainFeed, read_rows, split_dataset
from turbo_ray.data.preprocess import Padding, Preprocess, tokenizer_name
from turbo_ray.data.shard_writer import write_shards
from turbo_ray.data.shards import read_shard_manifest, resample, shard_files


def shard_rows(tmp_path, rates):
    """Shards holding one wav per sample rate (1.5 s of a 220 Hz tone each), read back as a
    batch."""
    rows = []
    for i, rate in enumerate(rates):
        path = tmp_path / f"u{i}.wav"
        t = np.arange(int(1.5 * rate)) / rate
        sf.write(path, 0.5 * np.sin(2 * np.pi * 220 * t), rate, subtype="PCM_16")
        rows.append(
            {
                "utterance_id": f"Ses01F_impro01_F{i:03d}",
                "session": 1,
                "speaker": "Ses01F",
                "label": "neutral",
                "label_id": 0,
                "text": "word " * (5 + 10 * i),
                "wav_path": str(path),
                "duration": 1.5,
                "sample_rate": rate,
            }
        )
    write_shards(
        pd.DataFrame(rows), str(tmp_path / "shards"), classes=["neutral", "happy", "angry", "sad"]
    )
    table = pq.read_table(min((tmp_path / "shards").glob("part-*.parquet")))
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def test_preprocess_resamples_and_tokenizes(tmp_path):
    batch = shard_rows(tmp_path, [8000, 16000])
    cfg = load_config(None, ["data.max_text_tokens=12"])
    prep = Preprocess(tokenizer_name(cfg), 16000, 12)
    out = prep(batch)
    assert [len(w) for w in out["waveform"]] == [24000, 24000]  # 1.5 s at 16 kHz, not cropped yet
    # the 8 kHz file was resampled: a 220 Hz tone keeps 220 zero-crossing pairs per second at 16 kHz
    resampled = list(batch["sample_rate"]).index(8000)
    crossings = np.sum(
        np.diff(np.sign(out["waveform"][resampled][4000:20000])) != 0
    )  # the middle second
    assert abs(crossings - 440) <= 4
    # [CLS] 5 words [SEP] for the 8 kHz row; the other row's 15 words are truncated
    assert len(out["input_ids"][resampled]) == 7 and len(out["input_ids"][1 - resampled]) == 12
    assert out["label"].dtype == np.int64 and list(out["utterance_id"]) == list(
        batch["utterance_id"]
    )
    # an empty block (what a filter can leave) passes through instead of failing the tokenizer
    empty = prep({name: column[:0] for name, column in batch.items()})
    assert len(empty["waveform"]) == len(empty["input_ids"]) == len(empty["label"]) == 0


def test_resample_equals_torchaudio_on_any_length():
    import torchaudio.functional as AF
    import torchaudio.transforms as T

    rng = np.random.default_rng(0)
    for source, target, length in [(8000, 16000, 12345), (44100, 16000, 44101), (22050, 16000, 7)]:
        wave = torch.from_numpy(rng.standard_normal(length).astype(np.float32))
        out = resample(wave.numpy(), source, target)
        unpadded = T.Resample(source, target)(wave).numpy()
        assert out.shape == unpadded.shape
        np.testing.assert_allclose(out, unpadded, atol=1e-6)  # the padding changes nothing kept
        # and the transform's filter is the function's (up to float rounding)
        np.testing.assert_allclose(out, AF.resample(wave, source, target).numpy(), atol=2e-5)


def ragged(arrays):
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


def rows(lengths, ids):
    return {
        "waveform": ragged([np.arange(n, dtype=np.float32) for n in lengths]),
        "input_ids": ragged([np.array([0, 7, 2]) for _ in lengths]),
        "label": np.zeros(len(lengths), dtype=np.int64),
        "utterance_id": np.array(ids),
    }


def test_pad_collate_pads_and_masks():
    collate = Padding(pad_token_id=1, max_samples=100)  # RoBERTa's pad id is 1, not 0
    batch = {
        "waveform": ragged([np.ones(5, np.float32), np.ones(3, np.float32)]),
        "input_ids": ragged([np.array([0, 7, 2]), np.array([0, 2])]),
        "label": np.array([2, 3]),
        "utterance_id": np.array(["a", "b"]),
    }
    out = collate(batch)
    assert out["waveforms"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert out["audio_lengths"].tolist() == [5, 3]
    assert out["input_ids"].tolist() == [[0, 7, 2], [0, 2, 1]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["labels"].tolist() == [2, 3]


def test_crops_are_centred_in_evaluation_and_seeded_by_seed_epoch_and_utterance_in_training():
    ids = [f"Ses01F_impro01_F{i:03d}" for i in range(8)]
    batch = rows([1000] * 8, ids)
    centred = Padding(0, max_samples=100)(batch)["waveforms"]
    assert (centred[:, 0] == 450).all() and centred.shape == (8, 100)

    def starts(seed, order=slice(None)):
        sub = {k: v[order].copy() for k, v in batch.items()}
        first = Padding(0, max_samples=100, seed=seed)(sub)["waveforms"][:, 0]
        return dict(zip(sub["utterance_id"], first.tolist()))

    epoch1 = starts((0, 1))
    assert len(set(epoch1.values())) > 4  # random windows
    assert (
        starts((0, 1), order=slice(None, None, -1)) == epoch1
    )  # per utterance: batch order is irrelevant
    assert starts((0, 1), order=slice(0, 3)) == {
        u: epoch1[u] for u in ids[:3]
    }  # and so is batch size
    assert (
        starts((0, 2)) != epoch1 and starts((1, 1)) != epoch1
    )  # another epoch or seed: other crops
    short = Padding(0, max_samples=100, seed=(0, 1))(rows([60, 1000], ids[:2]))
    assert short["audio_lengths"].tolist() == [60, 100]


def test_training_rows_are_dealt_anew_every_epoch_seeded_and_session_mixed(
    shared_ray, demo_corpus, tmp_path
):
    cfg = load_config(None, ["train.seed=3"])
    fold = demo_corpus.fold(cfg.data)
    ids = fold.train.utterance_id.tolist()
    session = dict(zip(demo_corpus.manifest.utterance_id, demo_corpus.manifest.session))
    # the order permutes whole shards: small ones, so that this small corpus has several
    shards = str(tmp_path / "shards")
    write_shards(demo_corpus.manifest, shards, rows_per_shard=16, classes=demo_corpus.classes)

    def rows(feed, epoch):
        return [row["utterance_id"] for row in feed.epoch(epoch).iter_rows()]

    feed = TrainFeed(cfg, shards, ids)
    first, second = rows(feed, 1), rows(feed, 2)
    assert sorted(first) == sorted(second) == sorted(ids)
    assert first != second  # a new order every epoch
    restarted = TrainFeed(cfg, shards, ids)  # a run restarted after epoch 1 reads epoch 2 alike
    assert rows(restarted, 2) == second and rows(restarted, 1) == first
    other = TrainFeed(load_config(None, ["train.seed=4"]), shards, ids)
    assert rows(other, 1) not in (first, second)
    assert {session[u] for u in ids} == {2, 3, 4, 5}
    for order in (first, second):  # batches of 16 mix sessions
        batches = [order[i : i + 16] for i in range(0, len(order) - 15, 16)]
        mixed = [len({session[u] for u in b}) >= 3 for b in batches]
        assert sum(mixed) >= 0.9 * len(batches), mixed

    # two DDP ranks: equal, disjoint shares (an odd row left out), dealt anew every epoch
    ranks = [TrainFeed(cfg, shards, ids, rank, world=2) for rank in (0, 1)]
    shares = {epoch: [rows(feed, epoch) for feed in ranks] for epoch in (1, 2)}
    for epoch, (zero, one) in shares.items():
        assert len(zero) == len(one) == len(ids) // 2 and not set(zero) & set(one)
        assert sorted(zero) == sorted(ranks[0].epoch_ids(epoch))
    assert set(shares[1][0]) != set(shares[2][0])

    # an evaluation split comes in the shards' order, every time
    val_ids = set(fold.val.utterance_id)
    stored = pd.concat(pd.read_parquet(f, columns=["utterance_id"]) for f in shard_files(shards))
    in_shard_order = [u for u in stored.utterance_id if u in val_ids]
    val = split_dataset(cfg, shards, fold.val.utterance_id.tolist())
    for _ in range(2):
        assert [r["utterance_id"] for r in val.iter_rows()] == in_shard_order
    assert len(in_shard_order) == len(val_ids) > 0


def test_rows_are_read_a_block_per_listed_shard(shared_ray, demo_corpus, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(demo_corpus.shards, shards)
    listed = read_shard_manifest(str(shards))["shards"]
    shutil.copy(shards / listed[0]["file"], shards / "part-99999.parquet")  # not in the manifest
    ids = demo_corpus.manifest.utterance_id.tolist()
    rows = read_rows(str(shards), ids, read_tasks=1).materialize()
    assert rows.num_blocks() == len(listed) > 1
    assert sorted(rows.to_pandas().utterance_id) == sorted(ids)  # each row once
