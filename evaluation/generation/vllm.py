"""The vLLM generation backend (``generation_backend: vllm``) of MT-Bench answers and AlpacaEval outputs.

vLLM (Kwon et al., 2023, "Efficient Memory Management for Large Language Model Serving with PagedAttention",
arXiv:2309.06180) batches requests continuously over a paged KV cache, which for a 7B policy answers MT-Bench about an
order of magnitude faster than left-padded ``model.generate`` batches. It is an optional extra for GPU images
(``pip install '.[vllm]'``: it pins its own CUDA torch), so it is imported inside functions only: this module imports,
and its pure parts are tested, without it.

Decoding follows :mod:`evaluation.generation.hf`: conversations are rendered with the model's chat template (generation
prompt appended, no extra special tokens), temperatures below ``GREEDY_BELOW`` decode greedily, others sample with
pure temperature sampling (no top-k, no top-p), and replies are decoded without special tokens and stripped. Each
sampled request carries its own seed, derived from the config seed and the conversation, so an answer does not depend
on which other questions share the engine's batches. Sampled answers still differ from the ``hf`` backend's for the
same seed (different RNG streams), and greedy ones agree up to kernel numerics.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib.util
import json
from collections.abc import Iterator, Sequence
from typing import Any

from evaluation.generation.hf import GREEDY_BELOW, ChatGenerator, Message

VLLM_INSTALL = "pip install '.[vllm]'"
"""How to get the backend (a GPU image: build it with ``INSTALL_VLLM=1``)."""

_SEED_MODULUS = 2**31
"""Per-request seeds stay below this, a range every vLLM version accepts as a ``SamplingParams.seed``."""


class VLLMUnavailableError(ImportError):
    """``generation_backend`` is ``vllm`` but vLLM is not installed where generation runs."""


def require_vllm(field: str = "generation_backend") -> None:
    """Raise :class:`VLLMUnavailableError` naming ``field`` and the install command unless vLLM can be imported.

    Only looks the package up (``importlib.util.find_spec``): importing vLLM takes seconds and initialises its
    platform, which a config check must not pay.

    Args:
        field: The config field that asked for vLLM, as the user wrote it (e.g. ``mt_bench.eval.generation_backend``).
    """
    if importlib.util.find_spec("vllm") is None:
        raise VLLMUnavailableError(
            f"{field}=vllm needs vLLM, which is not installed in this environment: {VLLM_INSTALL} on a GPU machine "
            "(docker: --build-arg INSTALL_VLLM=1), or use generation_backend=hf"
        )


def request_seed(seed: int, messages: Sequence[Message]) -> int:
    """The seed of one sampled request: a hash of the config seed and the conversation.

    Args:
        seed: The evaluation's seed (``EvalConfig.seed``).
        messages: The conversation the request answers.

    Returns:
        An integer in ``[0, 2**31)``, the same for the same ``(seed, messages)`` in every run and batch.
    """
    text = json.dumps([seed, [dict(m) for m in messages]], ensure_ascii=False, sort_keys=True)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % _SEED_MODULUS


def sampling_kwargs(temperature: float, max_new_tokens: int, seed: int | None) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments for FastChat's decoding settings.

    Args:
        temperature: The category's temperature; below ``GREEDY_BELOW`` (1e-4) means greedy decoding.
        max_new_tokens: Generation budget of the reply.
        seed: The request's seed (:func:`request_seed`); unused when greedy.

    Returns:
        Greedy: ``temperature=0`` (vLLM's greedy). Otherwise pure temperature sampling as the ``hf`` backend does it:
        ``top_p=1`` and ``top_k=0`` (vLLM >= 0.8 reads 0 as "all tokens"; -1 is its deprecated spelling), with the
        request's seed. Both decode without special tokens (``skip_special_tokens``), like ``batch_decode`` there.
    """
    common = {"max_tokens": max_new_tokens, "skip_special_tokens": True}
    if temperature < GREEDY_BELOW:
        return {"temperature": 0.0, **common}
    return {"temperature": float(temperature), "top_p": 1.0, "top_k": 0, "seed": seed, **common}


@contextlib.contextmanager
def vllm_generator(
    model: str, *, dtype: str, seed: int, max_new_tokens: int, gpu_memory_utilization: float
) -> Iterator[ChatGenerator]:
    """A vLLM engine on ``model`` for the duration of the block, as a :data:`ChatGenerator`.

    Args:
        model: A model spec (``trainers.models.resolve_model_path``): a saved policy's directory, ``embedded``, a hub
            id. Its tokenizer and chat template are read from the same place.
        dtype: ``float32``, ``bfloat16`` or ``float16`` (``trainers.dpo_config.PRECISION_DTYPES`` values).
        seed: The engine's seed and the base of every sampled request's seed (:func:`request_seed`).
        max_new_tokens: Generation budget per reply.
        gpu_memory_utilization: Fraction of the GPU's memory the engine takes (weights and KV cache).

    Yields:
        ``generate(conversations, temperature) -> replies``: one stripped reply per conversation, in order.

    Raises:
        VLLMUnavailableError: vLLM is not installed.
    """
    require_vllm()
    import vllm

    from trainers.models import resolve_model_path

    # Held in a dict the generator reads, so that closing the block really drops the engine (a closure over a local
    # would keep it alive as long as the caller keeps the generator).
    engine = {
        "llm": vllm.LLM(
            model=resolve_model_path(model), dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization
        )
    }

    def generate(conversations: Sequence[Sequence[Message]], temperature: float) -> list[str]:
        if not conversations:
            return []
        params = [
            vllm.SamplingParams(**sampling_kwargs(temperature, max_new_tokens, request_seed(seed, messages)))
            for messages in conversations
        ]
        outputs = engine["llm"].chat([list(messages) for messages in conversations], params, use_tqdm=False)
        return [output.outputs[0].text.strip() for output in outputs]

    try:
        yield generate
    finally:
        # The GPU must be free for what runs next in this process (the local judge, the next model's engine).
        llm = engine.pop("llm")
        shutdown = getattr(llm, "shutdown", None)  # recent vLLM; older versions free the engine when collected
        if callable(shutdown):
            shutdown()
        del llm
        _release_gpu_memory()


def _release_gpu_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
