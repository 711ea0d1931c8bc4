"""The served model against in-process prediction on this machine, in one run: `turbo-ray
serve`'s application (one replica with this machine's cores, dynamic batching) answering
`POST /predict` over HTTP (multipart, one utterance a request) from 1 and from 8 concurrent
clients (threads of this process, each with its own keep-alive connection), beside in-process
prediction (`predict`'s path, the model loaded once) of the same utterances. The weights are
untrained (speed does not depend on them); every answer must be a 200. Each setting is warmed
up first (tokenizers, first forwards, connections).

    python experiments/bench_serve.py                       # the demo corpus, 300 requests each
    python experiments/bench_serve.py --requests 1000 --max-batch-size 8
    python experiments/bench_serve.py --quick data.demo_utterances_per_speaker=12   # tests

in process      utterances/s of `audio_rows` + `predict_rows` over the corpus, 3 times (batches
                of 16, torch's default threads; the model loaded beforehand)
served          requests/s (= utterances/s), and each request's latency (p50, p99) as a client
                sees it; then 8 clients sending 4 utterances a request (JSON, base64): what
                the per-request cost leaves of in-process speed when requests carry several.
                The last line is served/in-process at 8 clients, one utterance a request
"""

import argparse
import base64
import http.client
import json
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
from bench_predict import untrained_model

from turbo_ray.classifier import load_classifier
from turbo_ray.predict import audio_rows
from turbo_ray.progress import ray_logs_in
from turbo_ray.runtime import free_port
from turbo_ray.serve import ServeOptions, start, stop

CLIENTS = (1, 8)
PER_REQUEST = 4  # utterances in a request of several (JSON)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300, help="per number of clients")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument(
        "--cpus-per-replica",
        type=float,
        default=os.cpu_count(),
        help="and its torch threads (default: this machine's cores, as in process)",
    )
    parser.add_argument("--max-batch-size", type=int, default=ServeOptions("").max_batch_size)
    parser.add_argument("--batch-wait-ms", type=float, default=ServeOptions("").batch_wait_ms)
    parser.add_argument("--quick", action="store_true", help="a few requests, no warm-up (tests)")
    parser.add_argument("overrides", nargs="*", help="config overrides")
    return parser


def in_process(model_dir: str, inputs, passes: int) -> float:
    """Utterances/s of `predict`'s in-process path over `inputs` (`audio_rows`, `predict_rows`),
    the model loaded once beforehand, over `passes` passes after a warm-up pass."""
    classifier = load_classifier(model_dir)
    classifier.predict_rows(audio_rows(inputs.rows))
    started = time.perf_counter()
    for _ in range(passes):
        classifier.predict_rows(audio_rows(inputs.rows))
    return passes * len(inputs.rows) / (time.perf_counter() - started)


def multipart(audio: bytes, text: str) -> tuple[bytes, str]:
    """A /predict body (fields audio and text) and its content type, encoded once."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    )
    tail = (
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{text}\r\n'
        f"--{boundary}--\r\n"
    )
    return head.encode() + audio + tail.encode(), f"multipart/form-data; boundary={boundary}"


def several(pairs: list[tuple[bytes, str]]) -> tuple[bytes, str]:
    """A JSON /predict body of several utterances (base64 audio) and its content type."""
    utterances = [{"audio": base64.b64encode(a).decode(), "text": t} for a, t in pairs]
    return json.dumps({"utterances": utterances}).encode(), "application/json"


def load(url: str, bodies: list[tuple[bytes, str]], clients: int, total: int) -> dict:
    """`total` requests from `clients` threads, each its share in turn over a connection of its
    own (http.client: a load generator's cost, not a library's): requests/s, latencies."""
    host, port = url.removeprefix("http://").split(":")

    def client(k: int) -> list[float]:
        latencies = []
        connection = http.client.HTTPConnection(host, int(port), timeout=300)
        for i in range(k, total, clients):
            body, kind = bodies[i % len(bodies)]
            sent = time.perf_counter()
            connection.request("POST", "/predict", body=body, headers={"Content-Type": kind})
            response = connection.getresponse()
            answer = response.read()
            latencies.append(time.perf_counter() - sent)
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {answer[:500]}")
        connection.close()
        return latencies

    with ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        latencies = [s for part in pool.map(client, range(clients)) for s in part]
        wall = time.perf_counter() - started
    return {
        "rate": total / wall,
        "p50": 1000 * np.percentile(latencies, 50),
        "p99": 1000 * np.percentile(latencies, 99),
    }


def main() -> None:
    args = build_parser().parse_args()
    tmp, model_dir, inputs, cfg = untrained_model(args.overrides, "bench_serve_")
    pairs = [(Path(p).read_bytes(), t) for p, t in zip(inputs.rows.wav_path, inputs.rows.text)]
    bodies = [multipart(audio, text) for audio, text in pairs]
    groups = [several(pairs[i : i + PER_REQUEST]) for i in range(0, len(pairs), PER_REQUEST)]
    total = 16 if args.quick else args.requests
    here = in_process(model_dir, inputs, 1 if args.quick else 3)
    options = ServeOptions(
        model_dir,
        replicas=args.replicas,
        cpus_per_replica=args.cpus_per_replica,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
    )
    served = {}
    with ray_logs_in(tmp / "ray.log") as log:
        print(f"Ray's own log: {log}")
        server = start(options, port=free_port())
        try:
            for clients in CLIENTS:
                if not args.quick:
                    load(server.url, bodies, clients, 4 * clients)  # warm-up
                served[clients] = load(server.url, bodies, clients, total)
            grouped = load(server.url, groups, 8, max(8, total // PER_REQUEST))
        finally:
            stop(server)
    crops = f"{cfg.data.max_seconds} s crops"
    print(f"{len(inputs.rows)} utterances (the demo corpus), {crops}, {os.cpu_count()} cores")
    print(f"  in process (batches of 16)            {here:7.1f} utterances/s")
    for clients, figures in served.items():
        print(
            f"  served, {clients} client{'s' if clients > 1 else ' '}, {total} requests "
            f"{figures['rate']:7.1f} requests/s   p50 {figures['p50']:6.1f} ms   "
            f"p99 {figures['p99']:6.1f} ms"
        )
    print(
        f"  served, 8 clients, {PER_REQUEST} utterances a request (JSON) "
        f"{PER_REQUEST * grouped['rate']:7.1f} utterances/s  p50 {grouped['p50']:6.1f} ms   "
        f"p99 {grouped['p99']:6.1f} ms"
    )
    print(
        f"({args.replicas} replica(s) of {args.cpus_per_replica:g} CPU, max_batch_size "
        f"{args.max_batch_size}, batch_wait_ms {args.batch_wait_ms:g})"
    )
    print(f"served/in-process at 8 clients: {served[8]['rate'] / here:.2f}")
    shutil.rmtree(tmp)  # kept only when the run fails, for its logs


if __name__ == "__main__":
    main()
