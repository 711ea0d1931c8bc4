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


@pytest.fixture(scope="session")
def shared_ray():
    """What `ray_local` started (its dashboard URL), shut down when the session ends."""
    import ray

    started = {}
    yield started
    ray.shutdown()


@pytest.fixture
def ray_local(shared_ray, tmp_path_factory):
    """A real local Ray as a job starts it (logical CPUs for the trials' feeds, the dashboard on:
    Tune needs the State API), shared by the tests that ask for it: the first starts it, the next
    find it running (a test that needs no Ray, or another cluster, shuts it down: the next use
    starts it again). Returns the dashboard URL."""
    import ray

    from turbo_ray.runtime import init_ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_TMPDIR", str(tmp_path_factory.getbasetemp() / "ray"))
        shared_ray["dashboard"] = init_ray(object_store_mb=512)
    return shared_ray["dashboard"]


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    """A small demo corpus in the IEMOCAP layout, its manifest and its Parquet shards."""
    from turbo_ray.config import DataConfig
    from turbo_ray.data.corpus import prepare_corpus

    cache = tmp_path_factory.mktemp("cache")
    return prepare_corpus(DataConfig(cache_dir=str(cache), demo_utterances_per_speaker=12))
