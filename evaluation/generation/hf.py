"""Batched chat generation with a transformers causal LM (the ``hf`` generation backend).

Conversations go through the model's chat template and are generated in left-padded batches; the output is
decoded without special tokens and stripped. Sampling uses pure temperature sampling (``top_k=0``, ``top_p=1``;
below ``GREEDY_BELOW`` greedy, FastChat's threshold) under a seed isolated from the caller's global RNG state.
:func:`hf_generator` wraps it as a :data:`ChatGenerator`, the interface the vLLM backend
(:mod:`evaluation.generation.vllm`) implements too, so a benchmark's turn logic runs on either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

GREEDY_BELOW = 1e-4
"""Temperatures below this decode greedily (FastChat's threshold)."""

Message = dict[str, str]

ChatGenerator = Callable[[Sequence[Sequence[Message]], float], list[str]]
"""A generation backend: ``(conversations, temperature) -> replies``, one stripped reply (the next assistant
message, special tokens removed) per conversation, in order; below ``GREEDY_BELOW`` it decodes greedily."""


@contextlib.contextmanager
def inference_mode(model: PreTrainedModel, seed: int | None = None) -> Iterator[None]:
    """Put ``model`` in eval/inference mode and restore its training flag afterwards.

    Args:
        model: The model.
        seed: If given, torch's RNG is seeded inside a forked RNG state, so sampling is reproducible and
            the caller's global RNG stream (e.g. a training loop's) is left untouched.
    """
    was_training = model.training
    device = _model_device(model)
    fork_devices = [device.index if device.index is not None else 0] if device.type == "cuda" else []
    model.eval()
    try:
        with torch.random.fork_rng(devices=fork_devices), torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)


def _model_device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids: list[int] = []
    for candidate in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
        for token_id in candidate if isinstance(candidate, (list, tuple)) else [candidate]:
            if token_id is not None and token_id not in ids:
                ids.append(int(token_id))
    if not ids:
        raise ValueError("neither the model's generation config nor the tokenizer defines an EOS token")
    return ids


def chat_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[Message]],
    *,
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
) -> list[str]:
    """Generate the next assistant message of each conversation.

    Conversations are rendered with the tokenizer's chat template (generation prompt appended), sorted by
    length, and generated in left-padded batches of ``input_ids``/``attention_mask`` of shape
    ``(batch, max_prompt_len)``. Call inside :func:`inference_mode`.

    Args:
        model: Causal LM.
        tokenizer: Its tokenizer; must have a chat template. It is not modified.
        conversations: Lists of ``{"role", "content"}`` messages, each ending with a user message.
        max_new_tokens: Generation budget per conversation.
        temperature: Sampling temperature; below ``GREEDY_BELOW`` decodes greedily.
        batch_size: Conversations per ``generate`` call.

    Returns:
        The generated replies (special tokens removed, stripped), in the order of ``conversations``.

    Raises:
        ValueError: The tokenizer has no chat template, or a prompt plus ``max_new_tokens`` exceeds the
            model's context length.
    """
    if tokenizer.chat_template is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no chat template; MT-Bench needs one")
    eos_ids = _eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    prompts = _chat_prompts(model, tokenizer, conversations, max_new_tokens)
    gen_config = _generation_config(max_new_tokens, temperature, eos_ids, pad_id)
    device = _model_device(model)
    replies: list[str] = [""] * len(prompts)
    for batch in _length_sorted_batches(prompts, batch_size):
        input_ids, attention_mask = _left_pad([prompts[k] for k in batch], pad_id)
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=gen_config,
        )
        texts = tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True)
        for k, text in zip(batch, texts, strict=True):
            replies[k] = text.strip()
    return replies


def _chat_prompts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[Message]],
    max_new_tokens: int,
) -> list[list[int]]:
    """Token ids of each rendered conversation; raises ``ValueError`` if one leaves no room for the reply."""
    max_positions = getattr(model.config, "max_position_embeddings", None)
    prompts: list[list[int]] = []
    for i, messages in enumerate(conversations):
        ids = tokenizer(render_chat(tokenizer, messages), add_special_tokens=False)["input_ids"]
        if max_positions is not None and len(ids) + max_new_tokens > max_positions:
            raise ValueError(
                f"conversation {i}: prompt of {len(ids)} tokens + max_new_tokens={max_new_tokens} "
                f"exceeds the model's context length of {max_positions} tokens"
            )
        prompts.append(ids)
    return prompts


def _generation_config(max_new_tokens: int, temperature: float, eos_ids: list[int], pad_id: int) -> GenerationConfig:
    """Greedy below ``GREEDY_BELOW``, otherwise pure temperature sampling (``top_k=0``, ``top_p=1``)."""
    sampling = temperature >= GREEDY_BELOW
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        **({"temperature": float(temperature), "top_k": 0, "top_p": 1.0} if sampling else {}),
    )


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> str:
    """Render messages with the chat template, ending with the assistant generation prompt."""
    return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)


def _length_sorted_batches(sequences: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``sequences`` in batches of similar length (longest first), to limit padding."""
    order = sorted(range(len(sequences)), key=lambda k: len(sequences[k]), reverse=True)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``input_ids`` and ``attention_mask``, both ``(batch, max_len)``."""
    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
        attention_mask[row, width - len(seq) :] = 1
    return input_ids, attention_mask


def last_logits(
    model: PreTrainedModel, sequences: Sequence[Sequence[int]], pad_id: int, batch_size: int, n_last: int
) -> torch.Tensor:
    """Next-token logits at the last ``n_last`` positions of each sequence (one forward pass per batch).

    Args:
        model: Causal LM; call inside :func:`inference_mode`.
        sequences: Token id lists, each at least ``n_last`` long.
        pad_id: Id used for left padding (masked out).
        batch_size: Sequences per forward pass.
        n_last: Number of final positions to return.

    Returns:
        Float logits of shape ``(len(sequences), n_last, vocab)``; ``[:, -1]`` predicts the token after
        each sequence.
    """
    device = _model_device(model)
    out: list[torch.Tensor | None] = [None] * len(sequences)
    for batch in _length_sorted_batches(sequences, batch_size):
        input_ids, attention_mask = _left_pad([sequences[k] for k in batch], pad_id)
        # Positions count real tokens only, so left padding does not shift RoPE positions.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=position_ids.to(device),
            logits_to_keep=n_last,
        ).logits
        for row, k in enumerate(batch):
            out[k] = logits[row].float().cpu()
    return torch.stack(out)  # type: ignore[arg-type]


@contextlib.contextmanager
def hf_generator(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_new_tokens: int,
    batch_size: int,
    seed: int | None = None,
) -> Iterator[ChatGenerator]:
    """:func:`chat_generate` as a :data:`ChatGenerator`, with ``model`` in :func:`inference_mode` (under ``seed``)
    for the duration of the block."""

    def generate(conversations: Sequence[Sequence[Message]], temperature: float) -> list[str]:
        return chat_generate(
            model,
            tokenizer,
            conversations,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            batch_size=batch_size,
        )

    with inference_mode(model, seed=seed):
        yield generate
