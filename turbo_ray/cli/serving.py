"""`turbo-ray serve`: a model folder over HTTP with Ray Serve, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal

from turbo_ray.cli.args import Command
from turbo_ray.serve.options import KINDS, ServeOptions

DEFAULTS = ServeOptions("")
STOPPING = (signal.SIGINT, signal.SIGTERM)  # what stops `serve`


def serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="a folder written by `turbo-ray export` (or --final)")
    parser.add_argument(
        "--address",
        help="the Ray cluster to serve on ('auto' on a head node; default: the Ray running "
        "here, else a local one started and stopped with this command)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="HTTP host (0.0.0.0: every interface; %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (%(default)s)")
    replica_flags(parser)
    batch_flags(parser)


def replica_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--replicas", type=int, help="a fixed number of replicas (default 1; or autoscale:)"
    )
    parser.add_argument(
        "--min-replicas", type=int, help="autoscale from this many replicas (default 1) …"
    )
    parser.add_argument("--max-replicas", type=int, help="… to this many, by the load")
    parser.add_argument(
        "--cpus-per-replica",
        type=float,
        default=DEFAULTS.cpus_per_replica,
        help="CPUs a replica reserves, and its torch threads (%(default)s)",
    )
    parser.add_argument(
        "--gpus-per-replica",
        type=float,
        default=DEFAULTS.gpus_per_replica,
        help="GPUs a replica reserves (%(default)s: it predicts on CPU)",
    )


def batch_flags(parser: argparse.ArgumentParser) -> None:
    """Dynamic batching, and the limits on a request."""
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULTS.max_batch_size,
        help="utterances per forward, batched across requests (%(default)s)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=DEFAULTS.batch_wait_ms,
        help="how long a batch waits to fill (%(default)s ms)",
    )
    parser.add_argument(
        "--max-audio-seconds",
        type=float,
        default=DEFAULTS.max_audio_seconds,
        help="longer audio is refused (%(default)s s)",
    )
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=DEFAULTS.max_body_mb,
        help="larger requests are refused (%(default)s MiB)",
    )
    parser.add_argument(
        "--max-utterances",
        type=int,
        default=DEFAULTS.max_utterances,
        help="utterances a request may send at most (%(default)s)",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from turbo_ray.serve import start, stop

    options = ServeOptions(**{name: getattr(args, name) for name in KINDS})  # a flag each
    try:  # the signals' handlers set once Ray is up (Ray sets its own as it starts)
        server = start(options.checked(), args.address, args.host, args.port, _stop_on_signals)
    except KeyboardInterrupt:  # while starting: what had started is stopped
        print("stopped before serving", flush=True)
        return 130
    try:
        print(f"serving {args.model_dir} at {server.url}", flush=True)
        print(f"  POST {server.url}/predict   GET {server.url}/model   {server.url}/docs")
        print("Ctrl-C stops it", flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        stop(server)
    print("stopped")
    return 0


def _stop_on_signals() -> None:
    for signum in STOPPING:
        signal.signal(signum, _interrupt)


def _interrupt(signum, frame):
    """The first Ctrl-C or SIGTERM stops serving: Serve, and the Ray it started, go with it;
    those that follow are ignored while they stop (never a traceback, never half stopped)."""
    for each in STOPPING:
        signal.signal(each, signal.SIG_IGN)
    raise KeyboardInterrupt


SERVE = Command(
    "serve",
    "serve a model folder over HTTP with Ray Serve (POST /predict, GET /model, /healthz, /docs)",
    serve_flags,
    cmd_serve,
)
