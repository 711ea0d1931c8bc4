"""Ray Data pipeline: real Parquet shards → preprocessing → padded batches in a real 2-worker TorchTrainer."""
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import ray.train
import soundfile as sf
import torch
from ray.train import DataConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from turbo_ray.config import Config, load_config
from turbo_ray.data.pipeline import PadCollate, Preprocess, pad_token_id, split_dataset, tokenizer_name
from turbo_ray.data.shards import write_shards


def shard_rows(tmp_path, rates):
    """Shards holding one wav per sample rate (1.5 s of a 220 Hz tone each), read back as a batch."""
    rows = []
    for i, rate in enumerate(rates):
        path = tmp_path / f"u{i}.wav"
        t = np.arange(int(1.5 * rate)) / rate
        sf.write(path, 0.5 * np.sin(2 * np.pi * 220 * t), rate, subtype="PCM_16")
        rows.append({"utterance_id": f"Ses01F_impro01_F{i:03d}", "session": 1, "speaker": "Ses01F",
                     "label": "neutral", "label_id": 0, "text": "word " * (5 + 10 * i),
                     "wav_path": str(path), "duration": 1.5, "sample_rate": rate})
    write_shards(pd.DataFrame(rows), str(tmp_path / "shards"), classes=["neutral", "happy", "angry", "sad"])
    table = pq.read_table(sorted((tmp_path / "shards").glob("part-*.parquet"))[0])
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def test_preprocess_resamples_crops_and_tokenizes(tmp_path):
    batch = shard_rows(tmp_path, [8000, 16000])
    cfg = load_config(None, ["data.max_seconds=1.0", "data.max_text_tokens=12"])
    prep = Preprocess(tokenizer_name(cfg), 16000, 1.0, 12, train=False)
    out = prep(batch)
    assert [len(w) for w in out["waveform"]] == [16000, 16000]  # 1.5 s → cropped to 1 s at 16 kHz
    # the 8 kHz file was resampled: a 220 Hz tone keeps 220 zero-crossing pairs per second at 16 kHz
    crossings = np.sum(np.diff(np.sign(out["waveform"][0])) != 0)
    assert abs(crossings - 440) <= 4
    # eval crops are centred and deterministic; training crops are random windows of the same length
    assert np.array_equal(out["waveform"][1], prep(batch)["waveform"][1])
    train_prep = Preprocess(tokenizer_name(cfg), 16000, 1.0, 12, train=True)
    crops = {float(train_prep(batch)["waveform"][1][:50].sum()) for _ in range(5)}
    assert len(crops) > 1
    assert len(out["input_ids"][0]) == 7 and len(out["input_ids"][1]) == 12  # [CLS] 5 words [SEP]; truncated
    assert out["label"].dtype == np.int64
    # an empty block (what a filter can leave) passes through instead of failing the tokenizer
    empty = prep({name: column[:0] for name, column in batch.items()})
    assert len(empty["waveform"]) == len(empty["input_ids"]) == len(empty["label"]) == 0


def test_pad_collate_pads_and_masks():
    collate = PadCollate(pad_token_id=1)  # RoBERTa's pad id is 1, not 0
    batch = {"waveform": np.array([np.ones(5, np.float32), np.ones(3, np.float32)], dtype=object),
             "input_ids": np.array([np.array([0, 7, 2]), np.array([0, 2])], dtype=object),
             "label": np.array([2, 3])}
    out = collate(batch)
    assert out["waveforms"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert out["audio_lengths"].tolist() == [5, 3]
    assert out["input_ids"].tolist() == [[0, 7, 2], [0, 2, 1]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["labels"].tolist() == [2, 3]


class IndexedCollate(PadCollate):
    """PadCollate plus each row's position in a known id list, to trace which rows a worker saw."""

    def __init__(self, pad_id, ids):
        super().__init__(pad_id)
        self.index = {u: i for i, u in enumerate(ids)}

    def __call__(self, batch):
        return super().__call__(batch) | {"row": torch.tensor([self.index[u] for u in batch["utterance_id"]])}


def trace_rows(loop_config):
    rank = ray.train.get_context().get_world_rank()
    shard = ray.train.get_dataset_shard("train")
    collate = IndexedCollate(loop_config["pad_id"], loop_config["ids"])
    for epoch in range(2):
        seen = []
        for batch in shard.iter_torch_batches(batch_size=5, collate_fn=collate):
            assert batch["waveforms"].shape[0] == batch["input_ids"].shape[0] == len(batch["row"])
            assert batch["waveforms"].shape[1] == int(batch["audio_lengths"].max())
            seen += batch["row"].tolist()
        with open(f"{loop_config['out']}/rank{rank}-epoch{epoch}.json", "w") as f:
            json.dump(seen, f)
        ray.train.report({"epoch": epoch})


def test_two_worker_trainer_sees_every_sample_once_per_epoch(ray_local, demo_corpus, tmp_path):
    cfg = Config()
    ids = sorted(demo_corpus.fold(cfg.data).train.utterance_id)
    ids = ids[: len(ids) // 2 * 2]  # Train splits equally across workers (an odd row would be dropped)
    trainer = TorchTrainer(
        trace_rows,
        train_loop_config={"pad_id": pad_token_id(cfg), "ids": ids, "out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        datasets={"train": split_dataset(cfg, demo_corpus.shards, ids, train=True)},
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(name="trace", storage_path=str(tmp_path / "runs")),
    )
    result = trainer.fit()
    assert result.error is None
    for epoch in range(2):
        seen = [json.loads((tmp_path / f"rank{r}-epoch{epoch}.json").read_text()) for r in range(2)]
        assert len(seen[0]) == len(seen[1]) == len(ids) // 2
        assert sorted(seen[0] + seen[1]) == list(range(len(ids)))
