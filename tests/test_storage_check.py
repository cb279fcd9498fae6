"""Shared storage on the local Ray cluster (one node) and the driver's reason for a policy it cannot find.

The multi-node cases (a node with its own directory at the storage path) are in ``tests/test_multinode.py``.
"""

from __future__ import annotations

import re
import sys

import pandas as pd
import pytest

from sweep.config import load_sweep_config
from sweep.mt_bench_scoring import start_mt_bench
from sweep.storage_check import (
    PROBE_PREFIX,
    StorageNotSharedError,
    check_trial_storage,
    mark_sweep_storage,
)
from tests.procs import make_env, run


def test_local_cluster_storage_passes_and_is_left_clean(tmp_path, short_tmp):
    """The check as the driver runs it, on a fresh local Ray instance: one node, its own disk is shared."""
    storage = tmp_path / "storage"
    code = (
        "import json, ray\n"
        "from sweep.storage_check import check_shared_storage\n"
        "ray.init(num_cpus=1, include_dashboard=False)\n"
        f"print(json.dumps(check_shared_storage({str(storage)!r})))\n"
    )
    done = run([sys.executable, "-c", code], cwd=tmp_path, env=make_env(short_tmp), timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.strip().splitlines()[-1] == "1"
    assert storage.is_dir() and not list(storage.glob(f"{PROBE_PREFIX}*"))


def test_storage_error_is_a_sweep_input_error():
    from sweep.preflight import SweepInputError

    assert issubclass(StorageNotSharedError, SweepInputError)  # the CLI prints it and exits with bad input


@pytest.mark.parametrize(("save_model", "expected"), [(True, "is storage_path shared"), (False, "save_model=false")])
def test_missing_policy_of_a_trained_trial_says_why(save_model, expected, tmp_path):
    config = load_sweep_config("smoke", [f"train.save_model={str(save_model).lower()}", "mt_bench.policy=all"])
    trials = pd.DataFrame(
        [{"trial_id": "t0", "status": "stable", "eval_accuracy": 0.5, "config": {"trial": {"loss": {"name": "dpo"}}}}]
    )
    scored, run = start_mt_bench(trials, config, str(tmp_path), tracker=None)
    assert expected in scored.loc[0, "mt_bench_reason"] and not run.pending  # nothing to generate: no Ray task


def test_a_trial_checks_it_sees_the_sweeps_storage(tmp_path):
    """The driver's token is found by a trial on a node sharing the storage; a node with its own directory of the
    same name (here: another directory) or another sweep's token gets an error naming the path and the node."""
    token = mark_sweep_storage(str(tmp_path), "exp")
    assert mark_sweep_storage(str(tmp_path), "exp") == token  # a resumed sweep keeps the token its trials carry
    check_trial_storage(str(tmp_path), "exp", token)
    elsewhere = tmp_path / "node-local"
    with pytest.raises(
        StorageNotSharedError,
        match=rf"storage_path {re.escape(str(elsewhere))} on node \S+ .*: no {re.escape(str(elsewhere))}",
    ):
        check_trial_storage(str(elsewhere), "exp", token)
    other = mark_sweep_storage(str(elsewhere), "exp")
    with pytest.raises(StorageNotSharedError, match=rf"holds another sweep's token \({other[:8]}"):
        check_trial_storage(str(elsewhere), "exp", token)
