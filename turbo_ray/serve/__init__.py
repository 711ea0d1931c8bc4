"""A model folder served over HTTP with Ray Serve: `turbo-ray serve MODEL_DIR`, or Serve's own
tools with the application builder `app` (`serve run turbo_ray.serve:app model_dir=models/ser`,
`serve deploy serve_config.yaml`). `protocol.py` is the HTTP protocol (what /predict takes and
answers), `deployment.py` the replicas, `options.py` what they are given.

    server = start(ServeOptions("models/ser"), port=8000)     # joins or starts Ray
    ...                                                        # POST http://127.0.0.1:8000/predict
    stop(server)
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from turbo_ray.errors import ModelFolderError, UsageError
from turbo_ray.serve.options import ServeOptions

APP = "turbo-ray"  # the application's name on the cluster


def app(args: dict):
    """Serve's application builder: `args` are the application's arguments (`model_dir`, and
    optionally the other fields of `ServeOptions`)."""
    return application(ServeOptions.from_args(args))


def application(options: ServeOptions):
    """The Serve application of `options`, its model folder checked here (and made absolute: a
    replica's working directory is not this one)."""
    from turbo_ray.classifier import META
    from turbo_ray.serve.deployment import ModelServer

    model_dir = Path(options.model_dir).expanduser().resolve()
    if not (model_dir / META).is_file():
        raise ModelFolderError(f"{model_dir} is not a model folder: no {META} in it")
    options = replace(options.checked(), model_dir=str(model_dir))
    return ModelServer.options(**options.deployment_options()).bind(options)


@dataclass(frozen=True)
class Server:
    url: str  # where /predict, /model, /healthz and /docs are
    own_ray: bool  # started its own Ray (stopped with it) rather than joining one
    own_serve: bool  # started Serve on the Ray (shut down with it) rather than finding it there


def start(
    options: ServeOptions,
    address: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ray: Callable[[], object] | None = None,
) -> Server:
    """Serve `options`' model on the Ray at `address` (or the one running here, joined; else a
    local one, started) at http://host:port, once every replica is ready; `on_ray` is called
    once Ray is connected (after Ray has set its signal handlers). Where Serve already runs, its
    HTTP host and port stay as they are (the url says which)."""
    import ray
    from ray import serve

    from turbo_ray.runtime import init_ray, running_ray

    built = application(options)  # a bad folder or option fails before Ray starts
    own = not (address or ray.is_initialized() or running_ray())
    if own:
        _check_free(host, port)
    init_ray(address)
    if on_ray:
        on_ray()
    running = _running_serve()
    if running is not None:
        host, port = running.host or host, running.port
    server = Server(f"http://{host}:{port}", own, running is None)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(built, name=APP, route_prefix="/")
    except BaseException:
        stop(server)
        raise
    return server


def stop(server: Server) -> None:
    """Stop serving: the Ray if it started it (Serve goes with it), else Serve if it started
    that, else this application."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    if server.own_ray:
        ray.shutdown()
    elif server.own_serve:
        serve.shutdown()
    else:
        serve.delete(APP)


def _running_serve():
    """The HTTP options of the Serve that runs on this Ray already, if one does."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return None
    return ray.get(controller.get_http_config.remote())


def _check_free(host: str, port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as err:
            raise UsageError(f"cannot serve at {host}:{port} ({err.strerror}): --port") from None
