"""Object storage over the real S3 protocol: an S3-compatible server (moto) on 127.0.0.1 holds the
shards, the checkpoints (a two-worker trial's TorchTrainer run), Tune's state and the job's config;
a finished search is resumed from the bucket alone, its local output folder deleted."""

import json
import re
import shutil
import socket
from pathlib import Path

import boto3
import pytest
from conftest import run_main
from moto.server import ThreadedMotoServer

REPO = Path(__file__).parents[1]
BUCKET = "turbo"


@pytest.fixture(scope="module")
def s3_env():
    """A local S3 server with an empty bucket; yields the environment that points AWS clients
    (pyarrow's S3 filesystem under Ray Train, Tune and Data) at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    client(env).create_bucket(Bucket=BUCKET)
    yield env
    server.stop()


def client(env):
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def keys(env, prefix):
    pages = client(env).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_search_in_a_bucket_resumes_from_the_bucket_alone(
    s3_env, tiny, run_command, mlflow_store_matches, tmp_path
):
    shards = f"s3://{BUCKET}/shards"
    with pytest.MonkeyPatch.context() as patch:  # shards written from this process
        for name, value in s3_env.items():
            patch.setenv(name, value)
        prepared = run_main("prepare", "--out", shards, *tiny)
    assert f"shards   {shards}" in prepared
    assert "shards/_manifest.json" in keys(s3_env, "shards/")

    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {loguniform: [1.0e-4, 3.0e-3]}\nstart: [{train.lr: 2.0e-3}]\n")
    out = tmp_path / "tune-s3"
    storage = [f"data.shards_dir={shards}", f"train.storage_path=s3://{BUCKET}/runs"]
    command = [
        "tune",
        "--output-dir",
        str(out),
        "--search-space",
        str(space),
        "--num-samples",
        "1",
        "--folds",
        "1",
        "--workers-per-trial",
        "2",  # the trial drives a TorchTrainer (one-worker trials: tests/test_tune.py)
        *tiny,
        *storage,
        "train.epochs=3",
    ]
    run_command(*command, env=s3_env)
    first = json.loads((out / "results.json").read_text())
    # the finished job pruned every other checkpoint, the run's last among them
    assert first["folds"][0]["best_epoch"] < 3, "this test needs a selected epoch before the last"
    stored = keys(s3_env, "runs/tune-s3/")
    assert "runs/tune-s3/config.yaml" in stored
    assert any(k.startswith("runs/tune-s3/search/") for k in stored)  # Tune's state
    (checkpoint,) = {m[1] for k in stored if (m := re.match(r"(.*/checkpoint_[^/]+)/", k))}
    assert checkpoint.startswith("runs/tune-s3/search/trial-")
    # the TorchTrainer's run is the trial's folder, in the bucket
    assert f"{checkpoint.rsplit('/', 1)[0]}/checkpoint_manager_snapshot.json" in stored
    assert first["folds"][0]["checkpoint"].endswith(checkpoint)  # the selected one, kept
    assert not list(out.glob("search"))  # nothing of Ray's storage on the local disk

    shutil.rmtree(out)  # another machine: only the bucket is left
    resumed = run_command(*command, "--resume", env=s3_env)
    assert f"config fetched from s3://{BUCKET}/runs/tune-s3/config.yaml" in resumed
    assert "(resumed)" in resumed
    again = json.loads((out / "results.json").read_text())
    assert again["folds"] == first["folds"]  # the same selection and test scores, from the bucket
    mlflow_store_matches(out, tmp_path)  # every trial's history, in the new folder's store
    # restored, not searched again: the same trial and checkpoint
    assert {k for k in keys(s3_env, "runs/tune-s3/search/") if "/checkpoint_" in k} == {
        k for k in stored if "/checkpoint_" in k
    }
