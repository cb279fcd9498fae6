"""Checks, before any trial starts, of everything an evaluation will need after training.

A sweep trains for hours before MT-Bench (or AlpacaEval, :mod:`sweep.alpaca_eval_preflight`) runs; a missing judge key,
an unreachable judge endpoint, a missing question file or a generation budget the model's context cannot hold would
otherwise surface only then (and, before this check, cost the user the map). Each problem is a
:class:`SweepInputError` naming the config field to change.
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

from transformers import PreTrainedTokenizerBase

from evaluation.config import EvalConfig
from evaluation.generation import render_chat
from evaluation.judges import JudgeError, OpenAIJudge
from evaluation.mt_bench import MTBenchData, load_mt_bench_data
from evaluation.vllm_generation import VLLMUnavailableError, require_vllm
from sweep.config import SweepConfig

REACHABLE_TIMEOUT_S = 5.0
"""How long the preflight waits for a TCP connection to a configured judge endpoint."""


class SweepInputError(ValueError):
    """An input (config, model, data, resources, evaluation) cannot work; raised before any trial starts."""


def check_mt_bench(config: SweepConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
    """Everything MT-Bench will need after training, when ``mt_bench.policy`` selects any trial.

    Args:
        config: The sweep config.
        tokenizer: The policy's tokenizer if the caller has it loaded already (else loaded here).

    Raises:
        SweepInputError: Questions or judge files unreadable, the judge's API key unset, its endpoint unreachable,
            or a question's prompt plus the generation budget beyond the policy model's context.
    """
    if config.mt_bench.policy == "none":
        return
    cfg = config.mt_bench.eval
    try:
        data = load_mt_bench_data(cfg)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise SweepInputError(f"mt_bench.eval (questions / judge prompts / references): {err}") from None
    if cfg.judge_backend == "openai":
        _check_openai_judge(cfg)
    _check_context(config.train.model, data, cfg.max_new_tokens, tokenizer)


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
    from sweep.node_tasks import NODE_TASK_TIMEOUT_S, alive_nodes, on_each_node

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


def _check_openai_judge(cfg: EvalConfig) -> None:
    try:
        OpenAIJudge.from_config(cfg).close()
    except JudgeError as err:
        raise SweepInputError(f"mt_bench.eval.api_key_env: {err}") from None
    check_reachable(cfg.judge_base_url, "mt_bench.eval.judge_base_url")


def check_reachable(base_url: str | None, field: str) -> None:
    """A configured judge endpoint must accept a TCP connection (None, api.openai.com, is not probed)."""
    if base_url is None:
        return
    url = urlparse(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=REACHABLE_TIMEOUT_S).close()
    except OSError as err:
        raise SweepInputError(f"{field}: {base_url} is not reachable ({err})") from None


def _check_context(
    model: str, data: MTBenchData, max_new_tokens: int, tokenizer: PreTrainedTokenizerBase | None
) -> None:
    """The longest conversation the answers need, with both turns' budgets, must fit the model's context.

    The second turn's prompt holds the first answer (up to ``max_new_tokens``), so a question needs its two user
    turns rendered with the chat template plus ``2 * max_new_tokens`` positions.
    """
    from transformers import AutoConfig

    from trainers.models import load_tokenizer, resolve_model_path

    path = resolve_model_path(model)
    context = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None)
    if context is None:
        return
    tokenizer = tokenizer or load_tokenizer(model)
    for question in data.questions:
        messages = []
        for turn, text in enumerate(question.turns, start=1):
            messages.append({"role": "user", "content": text})
            tokens = len(tokenizer(render_chat(tokenizer, messages), add_special_tokens=False)["input_ids"])
            needed = tokens + turn * max_new_tokens
            if needed > context:
                raise SweepInputError(
                    f"mt_bench.eval.max_new_tokens: question {question.question_id} turn {turn} needs a prompt of "
                    f"{tokens} tokens + {turn} x max_new_tokens={max_new_tokens} = {needed} positions, beyond the "
                    f"model's context length of {context}; lower mt_bench.eval.max_new_tokens"
                )
            messages.append({"role": "assistant", "content": ""})
