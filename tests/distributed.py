"""Run a function on a real 2-process gloo group on CPU (``torch.multiprocessing`` spawn, no torchrun).

Each process gets the environment a launcher gives a rank (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``), which accelerate reads to join the group (gloo on CPU without oneCCL).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp

from tests.procs import free_port


def _rank_main(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple, out_dir: str) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
    )
    import torch

    torch.set_num_threads(1)
    result = fn(*args)
    Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))


def run_ranks(fn: Callable[..., Any], *args: Any, out_dir: Path, world: int = 2) -> list[Any]:
    """Run ``fn(*args)`` on ``world`` gloo ranks (spawned processes); returns each rank's result, rank order.

    ``fn`` must be importable (module level) and its result picklable; an exception in any rank fails the call.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    mp.start_processes(
        _rank_main, args=(world, free_port(), fn, args, str(out_dir)), nprocs=world, join=True, start_method="spawn"
    )
    return [pickle.loads(Path(out_dir, f"rank{rank}.pkl").read_bytes()) for rank in range(world)]
