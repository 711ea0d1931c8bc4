"""Starting or joining Ray the way every job here needs it (DESIGN §6)."""
from __future__ import annotations

import os

import ray

from turbo_ray.data.pipeline import configure_ray_data

DRIVER_RESOURCE = "train_driver"  # a trial (Tune driver of one TorchTrainer) takes a sliver of this, no CPU


def init_ray(address: str | None = None, num_cpus: int | None = None,
             object_store_mb: int = 1024) -> str | None:
    """Join the cluster at `address` ("auto", "ray://…") or start a local one with the dashboard on
    127.0.0.1 and the trial-driver resource. Returns the dashboard URL, if any."""
    if address:
        context = ray.init(address=address)
    else:
        context = ray.init(
            num_cpus=num_cpus or os.cpu_count(),
            resources={DRIVER_RESOURCE: 64},
            object_store_memory=object_store_mb * 1024**2,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
        )
    configure_ray_data()
    return f"http://{context.dashboard_url}" if context.dashboard_url else None
