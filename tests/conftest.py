"""Shared pytest fixtures: the SmolLM2 tokenizer, the embedded and tiny model checkpoints, shared test data, a Ray head.

The environment is set before anything imports ``huggingface_hub`` (which reads ``HF_HUB_OFFLINE`` at
import time), so the project modules are imported inside the fixtures.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two test processes share the cores (pyproject's addopts): one OpenMP thread each, for what they start too,
    # instead of thread pools that spin against each other (a 9 s training test took 56 s that way).
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files of long tests (whole sweeps) first, then files of slow ones: the two test processes start the longest
    work early and share the short files out at the end, instead of one of them running a sweep alone at the end."""
    long_files = {item.path for item in items if item.get_closest_marker("long")}
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.path not in long_files, item.path not in slow_files))


SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
"""Read-only real test data (MT-Bench files, HH-RLHF sample); optional."""


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """Directory of the materialised embedded SmolLM2-135M-Instruct checkpoint.

    Materialised into the default cache (``$DLRML_CACHE`` / ``~/.cache/dlrml-sweep``), so only the first
    test run pays for the GGUF dequantisation.
    """
    from trainers.models import materialize_embedded_model

    return materialize_embedded_model()


@pytest.fixture(scope="session")
def tokenizer(embedded_model_dir: Path):
    """The SmolLM2 tokenizer (ChatML chat template, pad token set), loaded from the embedded checkpoint."""
    from trainers.models import load_tokenizer

    return load_tokenizer(str(embedded_model_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path) -> Path:
    """Directory with a tiny random SmolLM2-architecture model (seed 0) plus the SmolLM2 tokenizer."""
    from trainers.models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Path of ``../shared`` (real read-only test data); skips the test when it is missing."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DIR}")
    return SHARED_DIR


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A private temp dir directly under ``/tmp``: Ray's Unix socket paths inside it must stay under 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="dlrml-ray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator:
    """A Ray head node started with ``ray start --head --block`` (token authentication on, its own temp dir), for the
    tests of one module, ended with every process it started."""
    from tests.sweeps import start_ray_head

    yield from start_ray_head()
