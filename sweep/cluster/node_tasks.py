"""One small Ray task pinned to each of some nodes: how the sweep checks, before any trial, what every node sees."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

NODE_TASK_TIMEOUT_S = 300.0
"""How long a per-node check may take (a busy node may need to start a worker process first)."""


def alive_nodes(*, with_gpus: bool = False) -> dict[str, str]:
    """The alive nodes of the Ray cluster (only those with GPUs if ``with_gpus``): node id -> address."""
    import ray

    return {
        node["NodeID"]: node["NodeManagerAddress"]
        for node in ray.nodes()
        if node["Alive"] and (not with_gpus or node["Resources"].get("GPU", 0) > 0)
    }


def on_each_node(fn: Callable[..., Any], nodes: Mapping[str, str], *args: Any, timeout_s: float) -> dict[str, Any]:
    """Run ``fn(*args, node_id)`` once on each node (``NodeAffinitySchedulingStrategy``, hard), reserving no CPU, so
    it runs even on a node whose CPUs trials hold.

    Returns:
        Node id -> what ``fn`` returned there.

    Raises:
        ray.exceptions.GetTimeoutError: A node did not answer within ``timeout_s``.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    refs = {
        node_id: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(
            *args, node_id
        )
        for node_id in nodes
    }
    return dict(zip(refs, ray.get(list(refs.values()), timeout=timeout_s), strict=True))
