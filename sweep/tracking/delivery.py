"""Outage-tolerant delivery of a sweep's MLflow updates: an ordered queue of operations and its spool file.

Every update is queued as plain data (a JSON-ready ``{"op": ...}`` dict, applied by
:class:`sweep.tracking.runs.RunOperations`) and delivered in order. If the tracking server is unreachable, training
goes on: every operation that fails is queued in order with a warning, retried on the next one, and flushed when the
server is back. Whatever is still queued when the sweep ends is spooled to a JSON-lines file in the experiment
directory and replayed first by the next run of the same sweep (``--resume``). Which updates are queued, and when,
is the business of :class:`sweep.tracking.callback.MLflowTracker`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from sweep.tracking.runs import RunOperations, SweepRuns

logger = logging.getLogger(__name__)


class MLflowDelivery(RunOperations):
    """Delivers queued MLflow operations in order, keeps them through outages, and spools what is left.

    Args:
        runs: The sweep's runs.
        spool_path: File that keeps undelivered operations across driver restarts.
        retry_interval_s: Seconds between delivery attempts while the server is down.
    """

    def __init__(self, runs: SweepRuns, spool_path: str | Path | None = None, retry_interval_s: float = 15.0) -> None:
        _bound_http_retries()
        super().__init__(runs)
        self.spool_path = Path(spool_path) if spool_path else None
        self.retry_interval_s = retry_interval_s
        self._pending: deque[dict[str, Any]] = deque()
        self._down_since: float | None = None
        self._next_attempt = 0.0

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks into the experiment state: keep settings, drop the client and the queue."""
        state = super().__getstate__()
        state["_pending"] = deque()
        state["_down_since"] = None
        return state

    def _submit(self, op: dict[str, Any], force: bool = False) -> None:
        """Queue an operation behind everything still pending and try to deliver the queue (see :meth:`flush`)."""
        self._pending.append(op)
        self.flush(force=force)

    def flush(self, force: bool = False) -> bool:
        """Deliver queued operations in order; ``True`` when nothing is left pending.

        While the server is down, delivery is retried at most every ``retry_interval_s`` seconds (or when
        ``force``), so an outage never stalls the Tune loop on every reported result.
        """
        if self._down_since is not None and not force and time.monotonic() < self._next_attempt:
            return False
        while self._pending:
            op = self._pending[0]
            try:
                self.execute(op)
            except Exception as err:  # noqa: BLE001 - any transport/server failure means "retry later"
                self._next_attempt = time.monotonic() + self.retry_interval_s
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    logger.warning(
                        "MLflow tracking at %s is unreachable (%s: %s); training continues, MLflow updates are "
                        "queued from %s on and retried",
                        self.tracking_uri,
                        type(err).__name__,
                        str(err).splitlines()[0][:200] if str(err) else "",
                        op["op"],
                    )
                return False
            self._pending.popleft()
            if self._down_since is not None:
                logger.warning(
                    "MLflow tracking at %s is back after %.0f s; delivering %d queued updates",
                    self.tracking_uri,
                    time.monotonic() - self._down_since,
                    len(self._pending) + 1,
                )
                self._down_since = None
        return True

    def spool(self) -> int:
        """Write undelivered operations to the spool file (or remove it when none are left); returns their count."""
        if self.spool_path is None:
            return len(self._pending)
        if self._pending:
            self.spool_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.spool_path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(op) + "\n" for op in self._pending))
            tmp.replace(self.spool_path)
        elif self.spool_path.exists():
            self.spool_path.unlink()
        return len(self._pending)

    def _load_spool(self) -> None:
        """Put operations spooled by an earlier run of this sweep at the front of the queue."""
        if self.spool_path is None or not self.spool_path.exists():
            return
        ops = [json.loads(line) for line in self.spool_path.read_text().splitlines() if line.strip()]
        logger.warning("replaying %d MLflow updates spooled by an earlier run of this sweep", len(ops))
        self._pending.extendleft(reversed(ops))

    @property
    def pending(self) -> int:
        """Number of MLflow calls still queued."""
        return len(self._pending)


def _bound_http_retries() -> None:
    """MLflow's HTTP client retries a dead server for minutes per call by default; the queue retries instead."""
    for name, value in (
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20"),
    ):
        os.environ.setdefault(name, value)
