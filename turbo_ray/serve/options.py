"""What a served model is given: its model folder, its replicas (a fixed number, or Serve's
autoscaling between two), GPUs, dynamic batching and the limits on a request. From `turbo-ray
serve`'s flags, or Serve's application arguments (`serve run turbo_ray.serve:app model_dir=…`,
`args:` in serve_config.yaml: strings from the command line, typed values from YAML)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from turbo_ray.errors import UsageError


@dataclass(frozen=True)
class ServeOptions:
    model_dir: str
    replicas: int | None = None  # a fixed number of replicas (1 unless autoscaled)
    min_replicas: int | None = None  # autoscaled: from min_replicas (default 1) …
    max_replicas: int | None = None  # … to max_replicas, by ongoing requests per replica
    cpus_per_replica: float = 1.0  # and torch's threads in a replica (Ray's OMP_NUM_THREADS)
    gpus_per_replica: float = 0.0
    max_batch_size: int = 16  # utterances per forward (`@serve.batch`)
    batch_wait_ms: float = 10.0  # how long a batch waits to fill
    max_audio_seconds: float = 60.0  # per utterance
    max_body_mb: float = 32.0  # per request
    max_utterances: int = 64  # per request

    @classmethod
    def from_args(cls, args: dict) -> ServeOptions:
        """The options of Serve's application arguments, each converted to its type and checked;
        an unknown name or a bad value is a UsageError naming it."""
        if unknown := sorted(set(args) - set(KINDS)):
            raise UsageError(f"unknown argument {unknown[0]!r} (known: {', '.join(KINDS)})")
        if not args.get("model_dir"):
            raise UsageError("model_dir=<a model folder> is required")
        values = {}
        for name, value in args.items():
            try:
                values[name] = None if value is None else KINDS[name](value)
            except (TypeError, ValueError):
                kind = KINDS[name].__name__
                raise UsageError(f"{name}={value!r}: expected a number ({kind})") from None
        return cls(**values).checked()

    def checked(self) -> ServeOptions:
        fixed, scaled = self.replicas is not None, self.max_replicas is not None
        if fixed and (scaled or self.min_replicas is not None):
            raise UsageError(
                "replicas and min/max_replicas exclude each other: a fixed number of replicas, "
                "or autoscaling between two"
            )
        if self.min_replicas is not None and not scaled:
            raise UsageError("min_replicas needs max_replicas (autoscaling between the two)")
        low = 1 if self.min_replicas is None else self.min_replicas
        problems = {
            "replicas": fixed and self.replicas < 1,
            "min_replicas": low < 0,
            "max_replicas": scaled and self.max_replicas < max(low, 1),
            "cpus_per_replica": self.cpus_per_replica < 0,
            "gpus_per_replica": self.gpus_per_replica < 0,
            "max_batch_size": self.max_batch_size < 1,
            "batch_wait_ms": self.batch_wait_ms < 0,
            "max_audio_seconds": self.max_audio_seconds <= 0,
            "max_body_mb": self.max_body_mb <= 0,
            "max_utterances": self.max_utterances < 1,
        }
        if bad := [name for name, wrong in problems.items() if wrong]:
            value = getattr(self, bad[0])
            raise UsageError(f"{bad[0]}={value}: out of range ({RANGES[bad[0]]})")
        return self

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024**2)

    def deployment_options(self) -> dict:
        """Serve's options of the deployment: its replicas or autoscaling, what a replica
        reserves, how many requests a replica takes at once (two batches' worth: one runs while
        the next fills)."""
        scaling = (
            {"num_replicas": self.replicas or 1}
            if self.max_replicas is None
            else {
                "autoscaling_config": {
                    "min_replicas": 1 if self.min_replicas is None else self.min_replicas,
                    "max_replicas": self.max_replicas,
                    "target_ongoing_requests": max(1, self.max_batch_size // 2),
                }
            }
        )
        return scaling | {
            "ray_actor_options": {
                "num_cpus": self.cpus_per_replica,
                "num_gpus": self.gpus_per_replica,
            },
            "max_ongoing_requests": 2 * self.max_batch_size,
        }


KINDS = {field.name: str for field in dataclasses.fields(ServeOptions)} | {
    "replicas": int,
    "min_replicas": int,
    "max_replicas": int,
    "cpus_per_replica": float,
    "gpus_per_replica": float,
    "max_batch_size": int,
    "batch_wait_ms": float,
    "max_audio_seconds": float,
    "max_body_mb": float,
    "max_utterances": int,
}
RANGES = {
    "replicas": "at least 1",
    "min_replicas": "at least 0",
    "max_replicas": "at least 1 and min_replicas",
    "cpus_per_replica": "at least 0",
    "gpus_per_replica": "at least 0",
    "max_batch_size": "at least 1",
    "batch_wait_ms": "at least 0",
    "max_audio_seconds": "above 0",
    "max_body_mb": "above 0",
    "max_utterances": "at least 1",
}
