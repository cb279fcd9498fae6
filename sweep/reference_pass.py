"""The sweep's one shared reference pass: in the driver while a local Ray instance starts, or as a Ray task."""

from __future__ import annotations

import time
from pathlib import Path

from sweep.config import SweepConfig
from sweep.ray_cluster import joins_cluster, on_worker_resources
from trainers.data import PreferenceData
from trainers.reference import ReferenceLogps, compute_reference_logps


def reference_in_driver(config: SweepConfig, address: str | None) -> bool:
    """Whether the reference pass runs in the driver process, while a local Ray instance starts.

    On CPU with a local instance, the driver has already imported the ML stack (to check the data), and a Ray task
    would start a fresh process that imports it again; on a cluster or a GPU the pass runs as a Ray task on one trial
    worker's resources (its GPU, its node's view of the shared storage). Decide before :func:`init_ray`, which
    changes what :func:`joins_cluster` sees.
    """
    return config.share_reference and not config.resources.use_gpu and not joins_cluster(address)


def shared_reference(config: SweepConfig, data: PreferenceData, storage_path: str, in_driver: bool) -> ReferenceLogps:
    """Compute (or find stored) the sweep's reference log-probs and tokenised pairs, here or as a Ray task."""
    started = time.monotonic()
    root = str(Path(storage_path) / "reference")
    if in_driver:
        from sweep.ray_trial import quiet_progress_bars

        quiet_progress_bars()
        reference = compute_reference_logps(config.train, data, root)
    else:
        import ray

        task = on_worker_resources(compute_reference_logps, config.resources)
        reference = ray.get(task.remote(config.train, data, root))
    print(f"[sweep] reference log-probs {reference.key} ready in {time.monotonic() - started:.1f} s: {reference.path}")
    return reference
