"""Where the sweep's shared reference pass runs: in the driver only for a local CPU instance it is about to start."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import datasets
import pytest

from sweep.cluster import reference_pass
from sweep.cluster.reference_pass import reference_in_driver
from sweep.config import load_sweep_config
from tests.procs import make_env, run


@pytest.fixture
def smoke():
    return load_sweep_config("smoke")


def test_a_local_cpu_sweep_computes_its_reference_in_the_driver(smoke, monkeypatch):
    monkeypatch.setattr(reference_pass, "joins_cluster", lambda address: False)  # no cluster to join: a local start
    assert reference_in_driver(smoke, None)


def test_a_cluster_a_gpu_or_no_shared_reference_keeps_it_out_of_the_driver(smoke, monkeypatch):
    """On a cluster the pass must run on a worker (its node's storage, its GPU); on a GPU the driver has none."""
    assert not reference_in_driver(smoke, "127.0.0.1:1")  # an explicit address joins that cluster
    monkeypatch.setattr(reference_pass, "joins_cluster", lambda address: False)
    gpu = dataclasses.replace(smoke, resources=dataclasses.replace(smoke.resources, use_gpu=True))
    assert not reference_in_driver(gpu, None)
    assert not reference_in_driver(dataclasses.replace(smoke, share_reference=False), None)


def test_explicit_shards_keep_the_pass_out_of_the_driver(smoke, monkeypatch):
    """Several shards run as parallel Ray tasks even on a local CPU instance (so they can be tested without GPUs)."""
    monkeypatch.setattr(reference_pass, "joins_cluster", lambda address: False)
    sharded = dataclasses.replace(smoke, resources=dataclasses.replace(smoke.resources, reference_shards=2))
    assert not reference_in_driver(sharded, None)


SHARDED_SWEEP_SCRIPT = """
import json, sys
import ray
from sweep.config import load_sweep_config
from sweep.cluster.reference_pass import reference_in_driver, shared_reference
from trainers.trial_runner import load_trial_data

storage = sys.argv[1]
overrides = ["train.reference_batch_size=4"]  # 16 train and 8 held-out pairs: 4 + 2 batches
whole = load_sweep_config("smoke", overrides)
sharded = load_sweep_config("smoke", [*overrides, "resources.reference_shards=2"])
data = load_trial_data(whole.train)
in_driver = shared_reference(whole, data, f"{storage}/driver", in_driver=True)
ray.init(num_cpus=2, include_dashboard=False)
on_ray = shared_reference(sharded, data, f"{storage}/ray", in_driver=reference_in_driver(sharded, None))
# Without a dashboard, Ray 2.60's timeline reads the task events from the GCS.
tasks = [e for e in ray.timeline() if e.get("cat") == "task::compute_reference_shard"]
spans = [(e["ts"], e["ts"] + e["dur"]) for e in tasks]
print(json.dumps({"driver": in_driver.path, "ray": on_ray.path, "spans": spans}))
"""


@pytest.mark.slow
def test_sharded_ray_pass_stores_what_the_driver_pass_stores(tmp_path, short_tmp):
    """The sweep's Ray path with ``reference_shards=2`` on CPU: two shard tasks at once on a local Ray instance, and
    the same stored datasets (log-probs bit for bit) as the one-shard pass in the driver."""
    done = run(
        [sys.executable, "-c", SHARDED_SWEEP_SCRIPT, str(tmp_path)], cwd=tmp_path, env=make_env(short_tmp), timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "(1 shard in the driver)" in done.stdout and "(2 shards as parallel Ray tasks)" in done.stdout
    result = json.loads(done.stdout.strip().splitlines()[-1])
    (start_a, end_a), (start_b, end_b) = result["spans"]  # exactly two tasks ...
    assert start_a < end_b and start_b < end_a  # ... that ran at the same time
    assert Path(result["driver"]).name == Path(result["ray"]).name  # the key does not depend on the shards
    for split in ("train", "eval"):
        mine, theirs = (datasets.load_from_disk(str(Path(result[path]) / split)) for path in ("ray", "driver"))
        assert mine.column_names == theirs.column_names and len(mine) == len(theirs) > 0
        for column in theirs.column_names:
            assert mine[column] == theirs[column], (split, column)
