"""Ray Data feed rate vs training consumption, and streaming memory at corpus ×1 and ×10, in one
run.

    python experiments/bench_pipeline.py         # demo corpus at 20 and 200 utterances per speaker
    python experiments/bench_pipeline.py --quick # 4 and 40: a correctness check, not a measurement

feed         samples/s that read → block order → decode → tokenize → crop + pad (PadCollate)
             delivers
consumption  samples/s one training worker (one torch thread) takes: tiny Turbo step on the same
             batches
memory       peak RSS of the driver plus every Ray worker process while one epoch streams through
per core     utterances per CPU-second (the driver and all of Ray's processes) of an epoch's feed on
             an IEMOCAP-like epoch (2,000 utterances, 16 kHz mono, 2–12 s, mean ≈ 4.5 s; a 4-class
             IEMOCAP fold trains on ~4,000), recorded at 16 kHz and at 8 kHz, stored as wav (8 kHz
             resampled to 16 kHz in the feed) and as pcm16 (resampled once, at prepare)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import pandas as pd
import psutil
import soundfile as sf
import torch

from turbo_ray.config import load_config
from turbo_ray.data.corpus import prepare_corpus
from turbo_ray.data.iemocap import DEFAULT_CLASSES
from turbo_ray.data.pipeline import TrainFeed, collate_for
from turbo_ray.data.shard_writer import write_shards
from turbo_ray.model import build_model
from turbo_ray.runtime import init_ray
from turbo_ray.train import build_optimizer, build_scheduler, train_step


class PeakRSS:
    """Samples the summed RSS of this process and all its descendants (Ray's workers) every
    0.1 s."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:  # a worker that just exited has no memory to count
                    continue
            self.peak = max(self.peak, total)
            time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def feed(cfg, corpus) -> tuple[float, int, int, list[dict]]:
    """(samples/s after the first batch, samples, peak RSS bytes, first batches) for one training
    epoch."""
    ids = corpus.manifest.utterance_id.tolist()
    batches = (
        TrainFeed(cfg, corpus.shards, ids)
        .epoch(1)
        .iter_torch_batches(batch_size=cfg.data.batch_size, collate_fn=collate_for(cfg, epoch=1))
    )
    kept, n, start = [], 0, None
    with PeakRSS() as memory:
        for batch in batches:
            if start is None:
                start = time.perf_counter()
            else:
                n += len(batch["labels"])
            if len(kept) < 4:
                kept.append(batch)
    return n / (time.perf_counter() - start), n + cfg.data.batch_size, memory.peak, kept


def iemocap_like(folder: str, utterances: int, rate: int, audio_format: str, target: int) -> str:
    """Shards (`audio_format`; pcm16 at `target` Hz) of `utterances` noise wavs at `rate` Hz with
    IEMOCAP's length profile; returns their location."""
    rng = np.random.default_rng(0)
    seconds = np.clip(2.0 + rng.gamma(3.0, 0.85, utterances), 2.0, 12.0)  # mean ≈ 4.5 s
    rows = []
    for i, length in enumerate(seconds):
        path = f"{folder}/wav/u{i:05d}.wav"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sf.write(path, 0.1 * rng.standard_normal(int(length * rate)), rate, subtype="PCM_16")
        rows.append(
            {
                "utterance_id": f"Ses0{i % 5 + 1}F_impro01_F{i:03d}",
                "session": i % 5 + 1,
                "speaker": f"{i % 5 + 1}F",
                "label": "neutral",
                "label_id": 0,
                "text": "well that is what she told me about the meeting on monday",
                "wav_path": path,
                "duration": float(length),
                "sample_rate": rate,
            }
        )
    manifest = pd.DataFrame(rows)
    write_shards(
        manifest,
        f"{folder}/shards",
        audio_format,
        classes=DEFAULT_CLASSES.names,
        sample_rate=target if audio_format == "pcm16" else None,
    )
    return f"{folder}/shards"


def cpu_seconds() -> float:
    """CPU time so far of this process and its descendants (the local Ray's processes)."""
    me, total = psutil.Process(), 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += sum(proc.cpu_times()[:2])
        except psutil.Error:
            continue
    return total


def feed_per_core(cfg, shards: str, ids: list[str]) -> float:
    """Utterances per CPU-second of one training epoch's feed (first epoch excluded: warm-up)."""
    feed = TrainFeed(cfg, shards, ids)
    for _ in feed.epoch(1).iter_torch_batches(
        batch_size=cfg.data.batch_size, collate_fn=collate_for(cfg, 1)
    ):
        pass
    used = cpu_seconds()
    n = sum(
        len(b["labels"])
        for b in feed.epoch(2).iter_torch_batches(
            batch_size=cfg.data.batch_size, collate_fn=collate_for(cfg, 2)
        )
    )
    return n / (cpu_seconds() - used)


def consumption(cfg, batches: list[dict]) -> float:
    """Samples/s of tiny Turbo training steps (1 thread, as a 1-CPU Train worker) on real
    batches."""
    torch.set_num_threads(1)
    model = build_model(cfg, len(DEFAULT_CLASSES.names)).train()
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps=2 * len(batches))
    times = []
    for batch in batches * 2:
        start = time.perf_counter()
        train_step(model, batch, optimizer, scheduler, cfg, torch.device("cpu"))
        times.append(time.perf_counter() - start)
    return cfg.data.batch_size / statistics.median(times[1:])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--per-speaker", type=int, default=20, help="×1 corpus size (utterances per speaker)"
    )
    return parser


def feed_and_memory(cache: str, small: int):
    """Feed rate and peak memory of the demo corpus at ×1 and ×10, against one worker's
    consumption, printed; returns the ×10 corpus's config."""
    results = {}
    for scale, per_speaker in (("x1", small), ("x10", 10 * small)):
        cfg = load_config(
            None, [f"data.cache_dir={cache}", f"data.demo_utterances_per_speaker={per_speaker}"]
        )
        corpus = prepare_corpus(cfg.data)
        results[scale] = feed(cfg, corpus)
        rate, n, peak, _ = results[scale]
        print(
            f"  corpus {scale}: {len(corpus.manifest)} utterances, "
            f"feed {rate:.1f} samples/s over {n}, "
            f"peak RSS {peak / 2**20:.0f} MiB"
        )
    used = consumption(cfg, results["x1"][3])
    print(f"consumption (tiny Turbo step, 1 thread): {used:.1f} samples/s")
    print(f"feed/consumption: {results['x10'][0] / used:.2f}")
    print(f"memory x10/x1: {results['x10'][2] / results['x1'][2]:.2f}")
    return cfg


def per_core(cfg, cache: str, count: int) -> None:
    """Prints the feed per core of IEMOCAP-like shards, per recording rate and stored format."""
    target = cfg.data.sample_rate
    for audio_format, rate in (
        ("wav", 16_000),
        ("wav", 8_000),
        ("pcm16", 16_000),
        ("pcm16", 8_000),
    ):
        folder = f"{cache}/like-{audio_format}-{rate}"
        shards = iemocap_like(folder, count, rate, audio_format, target)
        ids = [f"Ses0{i % 5 + 1}F_impro01_F{i:03d}" for i in range(count)]
        utterances_per_s = feed_per_core(cfg, shards, ids)
        stored = target if audio_format == "pcm16" else rate
        print(
            f"feed per core, IEMOCAP-like lengths recorded at {rate // 1000} kHz, "
            f"stored as {audio_format} at {stored // 1000} kHz: "
            f"{utterances_per_s:.0f} utterances/s/core"
        )


def main() -> None:
    args = build_parser().parse_args()
    small = 4 if args.quick else args.per_speaker
    cache = tempfile.mkdtemp(prefix="bench_pipeline_")
    init_ray()
    cfg = feed_and_memory(cache, small)
    per_core(cfg, cache, 40 if args.quick else 2000)
    shutil.rmtree(cache)  # kept only when the run fails


if __name__ == "__main__":
    main()
