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
    for name, text in FLAGS.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=KINDS[name], default=getattr(DEFAULTS, name), help=text)


FLAGS = {  # ServeOptions' fields: their types (KINDS) and defaults are the options'
    "replicas": "a fixed number of replicas (default 1; or autoscale:)",
    "min_replicas": "autoscale from this many replicas (default 1) …",
    "max_replicas": "… to this many, by the load",
    "cpus_per_replica": "CPUs a replica reserves, and its torch threads (%(default)s)",
    "gpus_per_replica": "GPUs a replica reserves (%(default)s: it predicts on CPU)",
    "max_batch_size": "utterances per forward, batched across requests (%(default)s)",
    "batch_wait_ms": "how long a batch waits to fill (%(default)s ms)",
    "max_audio_seconds": "longer audio is refused (%(default)s s)",
    "max_body_mb": "larger requests are refused (%(default)s MiB)",
    "max_utterances": "utterances a request may send at most (%(default)s)",
}


def cmd_serve(args: argparse.Namespace) -> int:
    from turbo_ray.serve import start, stop

    options = ServeOptions(args.model_dir, **{name: getattr(args, name) for name in FLAGS})
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
    a Ctrl-C that follows is ignored while they stop (no traceback, nothing half stopped). Ray's
    own teardown resets SIGTERM's handler, so a SIGTERM late in it ends the process at once, and
    Ray's processes with it (they share its fate)."""
    for each in STOPPING:
        signal.signal(each, signal.SIG_IGN)
    raise KeyboardInterrupt


SERVE = Command(
    "serve",
    "serve a model folder over HTTP with Ray Serve (POST /predict, GET /model, /healthz, /docs)",
    serve_flags,
    cmd_serve,
)
