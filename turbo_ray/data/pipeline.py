"""Ray Data: Parquet shards → shuffle (training) → decode / resample / tokenize → cropped,
padded batches.

    feed = TrainFeed(cfg, shards_uri, train_ids, rank, world)    # in each training process
    rows = feed.epoch(epoch)                                     # or split_dataset(…): evaluation
    for batch in rows.iter_torch_batches(batch_size=…, collate_fn=collate_for(cfg, epoch)):
        batch["waveforms"], batch["audio_lengths"], batch["input_ids"],
        batch["attention_mask"], batch["labels"]

Preprocessing runs as Ray tasks on small batches (decoded audio is far larger than the stored
bytes); worker processes are reused, so the tokenizer loads once per process, not per batch or
epoch (what they do: `preprocess.py`, also without Ray). Cropping and padding happen per batch in
the training worker.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import ray
import ray.data
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.data.expressions import col
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from turbo_ray.config import Config, DataConfig
from turbo_ray.data.preprocess import Padding, padding_args, preprocess_for
from turbo_ray.data.shards import ROWS_PER_SHARD, shard_files

# each training worker shuffles what it receives through a buffer of one shard's rows
LOCAL_SHUFFLE_ROWS = ROWS_PER_SHARD
COLUMNS = ["utterance_id", "label_id", "text", "audio", "audio_format", "sample_rate"]
PREPROCESS_BATCH = 16
TASK_CPUS = 0.25  # what each read and preprocessing task asks Ray for


def configure_ray_data() -> None:
    """Ray Data settings for every process that builds datasets (the driver, each trial)."""
    ctx = ray.data.DataContext.get_current()
    # the V2 read path wants one whole free CPU, which Train has taken
    ctx.use_datasource_v2 = False
    # blocks in a fixed order: the same rows per worker, per run
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.target_max_block_size = 32 * 1024**2


def feed_cpus(cfg: DataConfig) -> float:
    """The CPUs a split's preprocessing (decode, resample, tokenize) takes at most: its
    concurrent tasks. (Its Parquet reads are Ray Data's to place.)"""
    return TASK_CPUS * cfg.preprocess_tasks


class PadCollate(Padding, NumpyBatchCollateFn):
    """`Padding` as Ray Data's `iter_torch_batches` takes it (numpy batches in)."""


def collate_for(cfg: Config, epoch: int | None = None) -> PadCollate:
    """The collate of training epoch `epoch` (random crops seeded by (train.seed, epoch)), or of
    evaluation (`epoch` None: centred crops)."""
    return PadCollate(*padding_args(cfg, epoch))


def read_shards(shards: str, read_tasks: int) -> ray.data.Dataset:
    """The shards' columns in one Ray Data block per shard. Left to itself, Ray sizes reads by the
    data and cuts each shard into 4–7 blocks of a few rows; every block then costs a task hop,
    which more than halved the feed's utterances per CPU-second. (Ray reads the files' metadata
    here, once: derive every epoch's rows from one such dataset.)"""
    files = shard_files(shards)
    return ray.data.read_parquet(
        files, num_cpus=TASK_CPUS, concurrency=read_tasks, override_num_blocks=len(files)
    ).select_columns(COLUMNS)


def read_rows(shards: str | ray.data.Dataset, utterance_ids: Sequence[str], read_tasks: int):
    """The rows of `utterance_ids` (Ray pushes projection and filter into the Parquet read), from
    a shards location or a `read_shards` dataset."""
    read = read_shards(shards, read_tasks) if isinstance(shards, str) else shards
    return read.filter(expr=col("utterance_id").is_in(list(utterance_ids)))


def preprocessed(
    cfg: Config, rows: ray.data.Dataset, placement_group: PlacementGroup | None = None
) -> ray.data.Dataset:
    """Decode, resample and tokenize `rows` lazily, in `preprocess_tasks` concurrent tasks; in
    `placement_group` when one is given (a Tune trial's own reservation, `feed_cpus` of it), else
    wherever Ray Data places them."""
    options = {}
    if placement_group is not None:
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group)
    return rows.map_batches(
        preprocess_for(cfg),
        batch_size=PREPROCESS_BATCH,
        num_cpus=TASK_CPUS,
        compute=ray.data.TaskPoolStrategy(size=cfg.data.preprocess_tasks),
        **options,
    )


def split_dataset(
    cfg: Config,
    shards: str,
    utterance_ids: Sequence[str],
    placement_group: PlacementGroup | None = None,
) -> ray.data.Dataset:
    """An evaluation split: the rows of `utterance_ids` in the shards' order, preprocessed."""
    return preprocessed(cfg, read_rows(shards, utterance_ids, cfg.data.read_tasks), placement_group)


class TrainFeed:
    """One rank's training rows, epoch by epoch, all fixed by (train.seed, epoch): a restarted run
    reads epoch e exactly as an uninterrupted one, on either runner. Each epoch the split's ids
    are permuted and dealt out in equal parts (rank r of `world` takes the r-th), and the rank's
    blocks (one per shard, each a hash-ordered mix of outer folds and speakers) come in a new order;
    the worker then shuffles its rows through a buffer (`LOCAL_SHUFFLE_ROWS`, seeded by seed,
    rank and epoch). No all-to-all shuffle: an epoch's first batch waits for the read, not for the
    whole split to move."""

    def __init__(
        self,
        cfg: Config,
        shards: str,
        utterance_ids: Sequence[str],
        rank: int = 0,
        world: int = 1,
        placement_group: PlacementGroup | None = None,
    ):
        self.cfg, self.ids, self.rank, self.world = cfg, list(utterance_ids), rank, world
        self.placement_group = placement_group
        self.shards = read_shards(shards, cfg.data.read_tasks)

    def epoch_ids(self, epoch: int) -> list[str]:
        """The ids this rank trains on in `epoch` (numbered from 1)."""
        order = self._rng(epoch).permutation(len(self.ids))
        share = len(self.ids) // self.world  # every rank takes as many steps
        return [self.ids[i] for i in order[self.rank * share : (self.rank + 1) * share]]

    def epoch(self, epoch: int) -> ray.data.Dataset:
        """The rows of `epoch`, preprocessed lazily."""
        rows = read_rows(self.shards, self.epoch_ids(epoch), self.cfg.data.read_tasks)
        block_seed = int(self._rng(epoch, self.rank).integers(2**31))
        return preprocessed(
            self.cfg, rows.randomize_block_order(seed=block_seed), self.placement_group
        )

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.train.seed, *key])
