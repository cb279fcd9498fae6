"""Where the sweep's shared reference pass runs: in the driver only for a local CPU instance it is about to start."""

from __future__ import annotations

import dataclasses

import pytest

from sweep import reference_pass
from sweep.config import load_sweep_config
from sweep.reference_pass import reference_in_driver


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
