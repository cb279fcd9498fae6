"""Before any trial: the sweep's storage path must be one shared directory on every node of the Ray cluster.

Trials read the shared reference log-probs from it and save their policies to it; the driver reads those back for
MT-Bench and the stability map. On node-local storage each node silently gets its own directory of the same name:
trials fail to find the reference, and the driver finds no saved model (MT-Bench is then skipped). The check writes
a token file from the driver, and a small Ray task pinned to each alive node (``NodeAffinitySchedulingStrategy``,
no CPU reserved) reads it and writes one back, which the driver then reads: visible and writable both ways.

Nodes an autoscaler adds later are checked by every trial before it trains (:func:`check_trial_storage`): the driver
leaves a token file in the experiment directory (:func:`mark_sweep_storage`), and a trial on a node that does not see
it errors at once with the reason, instead of failing later on a missing reference or saving its policy where the
driver cannot find it. The cluster files mount the same shared volume on every node type (``cluster/README.md``).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from sweep.cluster.node_tasks import NODE_TASK_TIMEOUT_S, alive_nodes, on_each_node
from sweep.errors import SweepInputError

PROBE_PREFIX = ".dlrml-storage-check-"
"""Name prefix of the token files the check writes (and removes) directly under the storage path."""
SWEEP_TOKEN_FILE = ".dlrml-storage-token"
"""The token file :func:`mark_sweep_storage` leaves in the experiment directory for the trials to find."""


class StorageNotSharedError(SweepInputError):
    """The storage path is not the same directory on every alive node (the CLI reports it as bad input)."""


def _probe_node(path: str, token: str, node_id: str) -> str | None:
    """On one node: read the driver's token at ``path`` and write this node's answer beside it.

    Returns:
        ``None`` if the token is there and the answer was written, else what this node saw instead.
    """
    probe = Path(path)
    if not probe.is_file():
        return f"no {probe.name} in {probe.parent} (a different directory on this node)"
    seen = probe.read_text()
    if seen != token:
        return f"{probe.name} holds another token ({seen[:8]}...)"
    try:
        Path(f"{path}.{node_id}").write_text(token)
    except OSError as err:
        return f"cannot write to {probe.parent}: {err}"
    return None


def check_shared_storage(storage_path: str, timeout_s: float = NODE_TASK_TIMEOUT_S) -> int:
    """Check that ``storage_path`` is the same, writable directory on every alive Ray node.

    Args:
        storage_path: The sweep's absolute storage path (as the driver resolved it).
        timeout_s: Limit on the per-node tasks.

    Returns:
        The number of nodes checked.

    Raises:
        StorageNotSharedError: Naming each node (id and address) whose view differs and what it saw.
    """
    root = Path(storage_path)
    root.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    probe = root / f"{PROBE_PREFIX}{token}"
    probe.write_text(token)
    nodes = alive_nodes()
    try:
        seen = on_each_node(_probe_node, nodes, str(probe), token, timeout_s=timeout_s)
        for node_id, problem in seen.items():
            answer = Path(f"{probe}.{node_id}")
            if problem is None and not (answer.is_file() and answer.read_text() == token):
                seen[node_id] = f"its answer {answer.name} is not visible from the driver's node"
    finally:
        for path in root.glob(f"{probe.name}*"):
            path.unlink(missing_ok=True)
    bad = {node_id: problem for node_id, problem in seen.items() if problem is not None}
    if bad:
        lines = "\n".join(f"  node {node_id[:12]} ({nodes[node_id]}): {problem}" for node_id, problem in bad.items())
        raise StorageNotSharedError(
            f"storage_path {storage_path} is not one shared directory on all {len(nodes)} nodes of the Ray cluster:\n"
            f"{lines}\nTrials would not find the shared reference log-probs and the driver would not find their "
            "saved models. Mount the same shared volume (EFS/NFS, a ReadWriteMany PVC) at this path on every node "
            "(cluster/README.md), or point storage_path at one."
        )
    return len(nodes)


def mark_sweep_storage(storage_path: str, experiment: str) -> str:
    """Leave (or, for a sweep being resumed, find) the experiment's storage token; trials check for it.

    Returns:
        The token, the same for every run of one experiment directory (a resumed trial keeps the token it started
        with).
    """
    marker = Path(storage_path) / experiment / SWEEP_TOKEN_FILE
    if marker.is_file():
        return marker.read_text().strip()
    marker.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    marker.write_text(token)
    return token


def check_trial_storage(storage_path: str, experiment: str, token: str) -> None:
    """In a trial, before it trains: the sweep's storage must be the driver's directory on this node too.

    Raises:
        StorageNotSharedError: The token is missing or different here (a node that joined after the sweep's check,
            or whose mount failed), naming this node's address.
    """
    import socket

    marker = Path(storage_path) / experiment / SWEEP_TOKEN_FILE
    seen = marker.read_text().strip() if marker.is_file() else None
    if seen == token:
        return
    what = f"no {marker}" if seen is None else f"{marker} holds another sweep's token ({seen[:8]}...)"
    raise StorageNotSharedError(
        f"storage_path {storage_path} on node {socket.gethostname()} is not the sweep's shared directory: {what}. "
        "The node joined after the sweep's storage check or its shared-volume mount failed; mount the same shared "
        "volume at this path on every node type (cluster/README.md)."
    )
