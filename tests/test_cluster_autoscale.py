"""`turbo-ray local-cluster`: the shipped cluster.yaml as a real autoscaling Ray cluster on this
machine (Ray's fake multi-node provider); the main job submitted through the dashboard with the
token, a GPU worker node added for its trial and removed once idle; `down` stops its processes
and spares another Ray instance of this machine."""

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).parents[1]
RAY = str(Path(sys.executable).parent / "ray")
TOKEN = {"RAY_AUTH_MODE": "token"}


def run(*command, env=None, check=True):
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert not check or done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def submit_when_ready(submit: list[str], env: dict) -> subprocess.CompletedProcess:
    """`ray job submit`, again while the head's job agent is still starting (Ray answers "No
    available agent to submit job, please try again later": a loaded machine starts it later
    than the dashboard); any other failure fails at once."""
    deadline = time.time() + 60
    while "No available agent" in (done := run(*submit, env=env, check=False)).stderr + done.stdout:
        assert time.time() < deadline, done.stderr[-3000:]
        time.sleep(2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now (held open together, so all different)."""
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def worker_nodes(dashboard: str, env) -> int:
    """Alive nodes other than the head, from the dashboard's state API (with the token)."""
    nodes = run(RAY, "list", "nodes", "--format", "json", "--address", dashboard, env=env | TOKEN)
    return sum(n["state"] == "ALIVE" and not n["is_head_node"] for n in json.loads(nodes.stdout))


def ray_processes(gcs_port: int) -> set[psutil.Process]:
    """A Ray instance's running processes: those naming its GCS port, and their children."""
    named = re.compile(rf"(--gcs-address=\S+:|--gcs_server_port=|--address=\S+:){gcs_port}(?!\d)")
    found = {
        p
        for p in psutil.process_iter(["cmdline"])
        if named.search(" ".join(p.info["cmdline"] or []))
    }
    for root in list(found):
        with contextlib.suppress(psutil.Error):
            found.update(root.children(recursive=True))
    return {p for p in found if running(p)}


def running(process: psutil.Process) -> bool:
    """Not exited (a zombie, exited but not yet reaped, has)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_other_ray(temp_dir: Path, env) -> int:
    """A one-node Ray on free ports with its own temp folder; returns its GCS port."""
    gcs, dashboard, client, agent = free_ports(4)
    start = [RAY, "start", "--head", f"--temp-dir={temp_dir}", "--num-cpus=0", f"--port={gcs}"]
    start += ["--include-dashboard=false", f"--dashboard-port={dashboard}"]
    start += [f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}"]
    run(*start, env=env)
    return gcs


def test_local_cluster_scales_a_gpu_worker_for_a_submitted_job_and_removes_it(
    other_ray_dir, ray_tmp, tiny, tmp_path
):
    # the client side of every command: token auth off unless TOKEN is added (the token itself is
    # the suite's, at $RAY_AUTH_TOKEN_PATH: `local-cluster up` finds it and writes none)
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env["RAY_TMPDIR"] = str(other_ray_dir)
    turbo_ray = [sys.executable, "-m", "turbo_ray.cli", "local-cluster"]
    port, dashboard_port = free_ports(2)
    ports = ["--port", str(port), "--dashboard-port", str(dashboard_port)]
    up = run(*turbo_ray, "up", "cluster.yaml", *ports, "--idle-timeout-minutes", "0.1", env=env)
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    down, other_port = None, None
    try:
        assert "gpu_worker: 0-4 nodes of {'CPU': 4, 'local_gpu': 1" in up.stdout
        assert f"ray job submit --address {dashboard} --" in up.stdout
        # the token there was (the suite's): where it is, and none written
        assert f"(the token: {os.environ['RAY_AUTH_TOKEN_PATH']})" in up.stdout
        assert "wrote a Ray token" not in up.stdout
        assert worker_nodes(dashboard, env) == 0  # nothing runs: only the head
        out = tmp_path / "job"
        entrypoint = [
            sys.executable,
            "experiments/tune_iemocap.py",
            "--address",
            "auto",
            "--use-gpu",
            "--folds",
            "1",
            "--num-samples",
            "1",
            "--output-dir",
            str(out),
            *tiny,
            "train.epochs=1",
            "train.gpu_resource=local_gpu",
        ]
        submit = [RAY, "job", "submit", "--address", dashboard, "--no-wait", "--", *entrypoint]
        refused = run(*submit, env=env, check=False)
        assert refused.returncode != 0 and "Authentication" in refused.stdout + refused.stderr
        submitted = submit_when_ready(submit, env | TOKEN)
        job_id = re.search(r"Job '(\S+)' submitted", submitted.stdout + submitted.stderr)[1]

        seen, deadline = [], time.time() + 300
        while (status := job(dashboard, job_id)["status"]) not in (
            "SUCCEEDED",
            "FAILED",
            "STOPPED",
        ):
            assert time.time() < deadline, status
            seen.append(worker_nodes(dashboard, env))
        logs = run(RAY, "job", "logs", job_id, "--address", dashboard, env=env | TOKEN).stdout
        assert status == "SUCCEEDED", logs[-3000:]
        assert max(seen) >= 1  # a gpu_worker node was added for the trial
        results = json.loads((out / "results.json").read_text())
        assert [f["test_session"] for f in results["folds"]] == [1]

        # the one-worker trial asked for the node through Tune's resource request, gone with the
        # trial: the node goes once idle for 6 s (Ray Train's own request, by a TorchTrainer,
        # would hold it for 180 s)
        ended, deadline = time.time(), time.time() + 120
        while worker_nodes(dashboard, env):
            assert time.time() < deadline, "the idle worker node was not removed"
            time.sleep(2)
        print(f"worker node removed {time.time() - ended:.0f} s after the job ended")

        # `down` kills the local cluster's processes (its GCS port), not another Ray's
        other_port = start_other_ray(ray_tmp("beside"), env)
        cluster, other = ray_processes(port), ray_processes(other_port)
        assert cluster and other and not cluster & other
        down = run(*turbo_ray, "down", env=env).stdout
        assert re.search(rf"stopped the local cluster at \S+:{port}: head and 0 worker node", down)
        assert not [p for p in cluster if running(p)] and not ray_processes(port)
        assert all(running(p) for p in other), "another Ray instance was stopped"
        assert "no local cluster is running" in run(*turbo_ray, "down", env=env).stdout
    finally:
        if down is None:
            run(*turbo_ray, "down", env=env)
        if other_port:
            for p in ray_processes(other_port):
                with contextlib.suppress(psutil.Error):
                    p.kill()


def job(dashboard: str, job_id: str) -> dict:
    """The job's record from the dashboard's REST API, with the token."""
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    request = urllib.request.Request(
        f"{dashboard}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)
