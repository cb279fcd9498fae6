"""Checks, before any trial starts, that both benchmarks share: the generation backend is installed where it runs,
and a configured judge endpoint answers a real request.

A sweep trains for hours before MT-Bench (:mod:`sweep.scoring.mt_bench.preflight`) or AlpacaEval
(:mod:`sweep.scoring.alpaca_eval.preflight`) runs; a missing judge key, an unreachable judge endpoint, a missing
question file or a generation budget the model's context cannot hold would otherwise surface only then. Each problem
is a :class:`sweep.errors.SweepInputError` naming the config field to change.
"""

from __future__ import annotations

from evaluation.generation.vllm import VLLMUnavailableError, require_vllm
from evaluation.judge_client import JudgeError, OpenAIJudge
from sweep.config import SweepConfig
from sweep.errors import SweepInputError


def check_generation_backends(config: SweepConfig, *, local: bool) -> None:
    """vLLM must be installed where an evaluation that selects trials generates with it.

    Args:
        config: The sweep config (``resources.use_gpu`` with vLLM is already a config rule).
        local: Whether the generation tasks run on this machine (a local Ray instance). On a cluster they run on the
            GPU workers, whose image is not the driver's (the head runs the CPU image, ``cluster/README.md``): there
            :func:`check_vllm_on_gpu_nodes` asks the GPU nodes once the driver has joined.

    Raises:
        SweepInputError: Naming ``<section>.eval.generation_backend`` and ``pip install '.[vllm]'``.
    """
    if not local:
        return
    for section in _vllm_sections(config):
        try:
            require_vllm(f"{section}.eval.generation_backend")
        except VLLMUnavailableError as err:
            raise SweepInputError(str(err)) from None


def _vllm_sections(config: SweepConfig) -> list[str]:
    """The evaluations that will generate with vLLM (they select trials and name the vllm backend)."""
    return [
        section
        for section in ("mt_bench", "alpaca_eval")
        if getattr(config, section).policy != "none" and getattr(config, section).eval.generation_backend == "vllm"
    ]


def _vllm_missing(node_id: str) -> bool:
    """On one node: whether vLLM cannot be imported there."""
    import importlib.util

    return importlib.util.find_spec("vllm") is None


def check_vllm_on_gpu_nodes(config: SweepConfig) -> int:
    """After joining the Ray cluster: vLLM must be installed on every alive GPU node, where generation tasks run.

    The driver's own environment says nothing about the GPU workers' image (the head runs the CPU image), so without
    this a GPU image built without the extra would fail every generation task after hours of training. GPU nodes an
    autoscaler starts later are not checked here; their generation tasks fail with the same message, recorded on the
    trials.

    Returns:
        The number of GPU nodes checked (0 when no evaluation uses vLLM, or no GPU node is up yet).

    Raises:
        SweepInputError: Naming the config field, each GPU node without vLLM, and how to build the image.
    """
    from sweep.cluster.node_tasks import NODE_TASK_TIMEOUT_S, alive_nodes, on_each_node

    sections = _vllm_sections(config)
    nodes = alive_nodes(with_gpus=True) if sections else {}
    absent = on_each_node(_vllm_missing, nodes, timeout_s=NODE_TASK_TIMEOUT_S)
    missing = [node_id for node_id, lacks_vllm in absent.items() if lacks_vllm]
    if missing:
        where = ", ".join(f"{node_id[:12]} ({nodes[node_id]})" for node_id in missing)
        raise SweepInputError(
            f"{sections[0]}.eval.generation_backend=vllm, but vLLM is not installed on GPU node(s) {where}: build the "
            "GPU image with --build-arg INSTALL_VLLM=1 (docker/Dockerfile), or use generation_backend=hf"
        )
    return len(nodes)


def check_judge(judge: OpenAIJudge, field: str, **params):
    """A configured judge endpoint must answer one real, cheap request: ``GET /models`` and a 1-token chat completion
    of the judge model (:meth:`evaluation.judge_client.OpenAIJudge.probe`, no retries), also at api.openai.com when no
    ``judge_base_url`` is set; the judge is closed afterwards.

    Args:
        judge: The judge the sweep will use after training.
        field: The config field to name (``<section>.eval.judge_base_url``).
        params: Extra parameters of the completion (AlpacaEval's ``logprobs``).

    Returns:
        The completion, for checks of what it holds.

    Raises:
        SweepInputError: The endpoint is unreachable or answered an error: naming the request, status and endpoint.
    """
    try:
        return judge.probe(**params)
    except JudgeError as err:
        raise SweepInputError(f"{field}: {err}") from None
    finally:
        judge.close()
