"""Each benchmark's --quick mode runs as a user runs the script and prints its figures and ratios
as finite numbers (never a speed assertion). Those that use Ray join the shared one
(RAY_ADDRESS), as a script joins a running cluster."""

import math
import re

import pytest
import ray


@pytest.fixture(scope="module")
def joined(shared_ray) -> dict:
    """The environment of a process that joins the shared Ray."""
    return {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def run_quick(run_command, script, *args, env=None):
    return run_command(f"experiments/{script}", "--quick", *args, env=env)


def ratios(output, names):
    values = {}
    for name in names:
        match = re.search(rf"^{re.escape(name)}: (\S+)$", output, re.MULTILINE)  # nan, inf too
        assert match, f"no '{name}: R' line in:\n{output}"
        values[name] = float(match.group(1))
        assert math.isfinite(values[name]) and values[name] > 0
    return values


def test_bench_turbo_step(run_command):
    out = run_quick(run_command, "bench_turbo_step.py")
    for variant in ("baseline", "naive", "turbo", "shared P", "suffix S", "P + S"):
        assert re.search(rf"^  {re.escape(variant)} +[0-9.]+ ms/step$", out, re.MULTILINE), out
    ratios(out, ["naive/baseline", "floor", "turbo/baseline (this project)"])
    assert (
        out.strip().splitlines()[-1].startswith("turbo/baseline (this project): ")
    )  # printed last


def test_bench_pipeline(run_command, joined):
    out = run_quick(run_command, "bench_pipeline.py", env=joined)
    ratios(out, ["feed/consumption", "memory x10/x1"])
    for recorded, stored in (
        ("16", "wav at 16"),
        ("8", "wav at 8"),
        ("16", "pcm16 at 16"),
        ("8", "pcm16 at 16"),
    ):
        assert re.search(
            rf"^feed per core, IEMOCAP-like lengths recorded at {recorded} kHz, stored as {stored} "
            r"kHz: [0-9]+ utterances/s/core$",
            out,
            re.MULTILINE,
        ), out


def test_bench_scaling(run_command, joined):
    out = run_quick(run_command, "bench_scaling.py", env=joined)
    assert re.search(
        r"^all-reduce per step with 2 workers: [0-9.]+ MiB of fp32 gradients, "
        r"[0-9.]+ s timed alone",
        out,
        re.MULTILINE,
    ), out
    assert re.search(
        r"^machine ceiling: .* takes [0-9.]+ s alone and "
        r"[0-9.]+ s with two processes side by side: "
        r"at most [0-9.]+x$",
        out,
        re.MULTILINE,
    ), out
    ratios(out, ["speed-up 2 vs 1 workers", "scaling/ceiling (this project)"])


STAMPS = r"worker_start -?[0-9.]+ s, first_batch -?[0-9.]+ s, first_step -?[0-9.]+ s$"


def test_bench_startup(run_command, tiny, joined):
    out = run_quick(run_command, "bench_startup.py", *tiny, "train.epochs=1", env=joined)
    for lane in (
        r"search 0 \(cold pool\), trial 0 \(new process\): from fit to ",
        r"search 0, trial 1 \(reused process\): from the end of trial 0 to ",
        r"two workers \(TorchTrainer\), warm pool: from fit to ",
    ):
        assert re.search(rf"^  {lane}{STAMPS}", out, re.M), out
    assert re.search(
        r"^import floor \(fresh `import turbo_ray.train`, median of 1\): [0-9.]+ s$", out, re.M
    )
    names = ["startup/(import and model built)", "two-worker trial/import", "reused trial/import"]
    ratios(out, [*names, "startup/import (this project)"])
    assert out.strip().splitlines()[-1].startswith("startup/import (this project): ")


def test_bench_search(run_command, tiny, joined):
    out = run_quick(run_command, "bench_search.py", *tiny, "train.epochs=1", env=joined)
    for name in ("under ASHA", "run to the end"):
        assert re.search(rf"^  {name} +\d+ +\d+ +config \d +[0-9.]+ +[0-9.]+$", out, re.M), out
    ratios(out, ["asha/full wall", "asha/full trial-epochs"])
    assert out.strip().splitlines()[-1].startswith("asha/full trial-epochs: ")


def test_bench_predict(run_command, tiny, joined):
    out = run_quick(run_command, "bench_predict.py", *tiny, env=joined)
    for name in ("in process \\(1 thread\\)", "Ray Data, 2 actors"):
        assert re.search(rf"^  {name} +[0-9.]+ utterances/s per core$", out, re.M), out
    ratios(out, ["ray/in-process per core"])


def test_gpu_check_without_cuda_says_so_and_passes(run_command):
    env = {"CUDA_VISIBLE_DEVICES": ""}  # no GPU seen, whatever the machine has
    out = run_command("experiments/gpu_check.py", env=env)
    assert out.strip() == "gpu_check: no CUDA device here; nothing to check (exit 0)"


def test_sim_search(run_command):
    out = run_quick(run_command, "sim_search.py")
    for gpus, w in ((5, 1), (5, 2), (20, 1), (20, 2)):
        assert re.search(rf"^ +{gpus} +{w} +[0-9.]+ +[0-9.]+ .* +-?[0-9.]+$", out, re.M), out
    assert re.search(r"W=1's spread over seeds: [0-9.]+ UA points$", out, re.M), out
    last = out.strip().splitlines()[-1]  # printed last
    assert re.fullmatch(r"makespan W=[12] G=20 / W=1 G=5: [0-9.]+", last), out
    assert 0 < float(last.split(": ")[1]) <= 1


def test_bench_serve(run_command, tiny, joined):
    out = run_quick(run_command, "bench_serve.py", *tiny, env=joined)
    assert re.search(r"^  in process \(batches of 16\) +[0-9.]+ utterances/s$", out, re.M)
    for clients in ("1 client ", "8 clients"):
        assert re.search(
            rf"^  served, {clients}, 16 requests +[0-9.]+ requests/s +p50 +[0-9.]+ ms +"
            r"p99 +[0-9.]+ ms$",
            out,
            re.M,
        ), out
    ratios(out, ["served/in-process at 8 clients"])
    assert out.strip().splitlines()[-1].startswith("served/in-process at 8 clients: ")
