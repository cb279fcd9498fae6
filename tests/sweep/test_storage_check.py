"""Node checks on the local Ray cluster (shared storage, vLLM on GPU nodes) and the driver's reason for a policy it
cannot find.

The multi-node cases (a node with its own directory at the storage path) are in ``tests/sweep/test_multinode.py``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import pandas as pd
import pytest

from sweep.cluster.storage import (
    PROBE_PREFIX,
    StorageNotSharedError,
    check_trial_storage,
    mark_sweep_storage,
)
from sweep.config import load_sweep_config
from sweep.scoring.mt_bench.score import start_mt_bench
from tests.procs import make_env, run


def test_node_checks_on_a_local_cluster(tmp_path, short_tmp):
    """The checks as the driver runs them, on a fresh local Ray instance whose one node declares a GPU: its own disk
    is shared storage (checked, nothing left behind); vLLM generation is refused there, since vLLM is not installed
    on it (this machine), naming the field and the node; the hf backend asks no node anything."""
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: the refusal cannot be observed")
    storage = tmp_path / "storage"
    vllm = ["resources.use_gpu=true", "mt_bench.policy=all", "mt_bench.eval.generation_backend=vllm"]
    code = (
        "import json, ray\n"
        "from sweep.config import load_sweep_config\n"
        "from sweep.errors import SweepInputError\n"
        "from sweep.scoring.preflight import check_vllm_on_gpu_nodes\n"
        "from sweep.cluster.storage import check_shared_storage\n"
        "ray.init(num_cpus=1, num_gpus=1, include_dashboard=False)\n"
        f"nodes = check_shared_storage({str(storage)!r})\n"
        "checked = check_vllm_on_gpu_nodes(load_sweep_config('smoke', ['resources.use_gpu=true']))\n"
        "try:\n"
        f"    check_vllm_on_gpu_nodes(load_sweep_config('smoke', {vllm!r}))\n"
        "    error = None\n"
        "except SweepInputError as err:\n"
        "    error = str(err)\n"
        "print(json.dumps([nodes, checked, error, ray.get_runtime_context().get_node_id()]))\n"
    )
    done = run([sys.executable, "-c", code], cwd=tmp_path, env=make_env(short_tmp), timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    nodes, checked, error, node_id = json.loads(done.stdout.strip().splitlines()[-1])
    assert (nodes, checked) == (1, 0)
    assert storage.is_dir() and not list(storage.glob(f"{PROBE_PREFIX}*"))
    assert error is not None and error.startswith("mt_bench.eval.generation_backend=vllm, but vLLM is not installed")
    assert node_id[:12] in error and "INSTALL_VLLM=1" in error


def test_storage_error_is_a_sweep_input_error():
    from sweep.errors import SweepInputError

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
