"""Shared test setup: offline, no usage stats, small thread pools (2-core machines)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

# Ray workers import functions defined in test modules by module name: let them find this folder.
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])
)

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """A real local Ray per test module (the cluster tests need their own), as a job starts it
    (logical CPUs for the trials' feeds, the dashboard on: Tune needs the State API). Yields the
    dashboard URL."""
    import ray

    from turbo_ray.runtime import init_ray

    os.environ.setdefault("RAY_TMPDIR", str(tmp_path_factory.getbasetemp() / "ray"))
    yield init_ray(object_store_mb=512)  # the dashboard URL
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    """A small demo corpus in the IEMOCAP layout, its manifest and its Parquet shards."""
    from turbo_ray.config import DataConfig
    from turbo_ray.data.corpus import prepare_corpus

    cache = tmp_path_factory.mktemp("cache")
    return prepare_corpus(DataConfig(cache_dir=str(cache), demo_utterances_per_speaker=12))
