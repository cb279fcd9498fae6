"""Joining or starting the Ray cluster a sweep runs on, and Ray tasks sized like one trial worker."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

from sweep.config import ResourcesConfig

WORKER_LOGS_ON_CLUSTER = "each node's /tmp/ray/session_latest/logs (also `ray logs` and the dashboard)"


def on_worker_resources(fn: Callable, resources: ResourcesConfig):
    """``fn`` as a Ray task on one trial worker's resources (its GPU included), retried like a trial."""
    import ray

    return ray.remote(
        num_cpus=resources.cpus_per_worker,
        num_gpus=resources.gpus_per_worker if resources.use_gpu else 0,
        max_retries=resources.max_failures,
    )(fn)


def joins_cluster(address: str | None) -> bool:
    """Whether :func:`init_ray` joins a running Ray cluster (else it starts a local instance)."""
    import ray
    from ray._private.services import canonicalize_bootstrap_address

    return ray.is_initialized() or canonicalize_bootstrap_address(address) is not None


def _address_env(gcs_address: str | None) -> dict[str, dict[str, str]] | None:
    """The runtime env that tells every worker of the sweep its cluster's address (see :func:`init_ray`), unless a
    job submitted with ``ray job submit`` sets ``RAY_ADDRESS`` itself (``ray.init`` refuses a key set twice)."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    if gcs_address is None:
        return None
    job_config = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR, "{}"))
    if "RAY_ADDRESS" in ((job_config.get("runtime_env") or {}).get("env_vars") or {}):
        return None
    return {"env_vars": {"RAY_ADDRESS": gcs_address}}


def init_ray(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (else ``RAY_ADDRESS`` or the one ``ray start`` recorded), or start one.

    A local instance gets a GCS port chosen here. Either way every worker is told the cluster's address through
    ``RAY_ADDRESS``: Ray Train's placement-group cleaner (a detached actor per trial) asks the state API whether its
    trial's controller is alive, and without an address the state API auto-detects a cluster, which can fail or find
    another one when a second Ray instance runs on the machine. A cleaner that cannot see its controller exits, and
    the placement group of a trial whose controller died (a killed worker, a trial Tune stopped) is then never freed:
    later trials wait for those CPUs until their placement patience runs out.
    """
    import ray
    from ray._private.services import canonicalize_bootstrap_address

    # Workers' output (library warnings, progress bars of every trial) stays in the logs on disk: the driver prints
    # one line per trial event instead (sweep.trials.progress).
    if joins_cluster(address):
        runtime_env = None if ray.is_initialized() else _address_env(canonicalize_bootstrap_address(address))
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, runtime_env=runtime_env)
        print(f"[sweep] worker logs: {WORKER_LOGS_ON_CLUSTER}")
        return
    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # read by the local head node when it starts its GCS
    try:
        gcs_address = f"{ray.util.get_node_ip_address()}:{port}"
        context = ray.init(log_to_driver=False, runtime_env=_address_env(gcs_address))
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]
    print(f"[sweep] worker logs: {Path(context.address_info['session_dir']) / 'logs'}")
