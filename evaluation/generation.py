"""Batched chat generation with a transformers causal LM, and MT-Bench answer generation for any backend.

Answers follow FastChat's ``gen_model_answer.py``: each question's turns are asked in order through the
model's chat template, the second turn conditioned on the model's own first answer; the sampling
temperature depends on the category (``TEMPERATURE_CONFIG``; below 1e-4 means greedy decoding); the output
is decoded without special tokens and stripped. Unlike FastChat, conversations are generated in batches
(left-padded) and sampling uses pure temperature sampling (``top_k=0``, ``top_p=1``) under a seed that is
isolated from the caller's global RNG state.

The turn logic (:func:`answer_questions`) takes a :data:`ChatGenerator`, so the transformers path here
(:func:`hf_generator`) and the vLLM path (:mod:`evaluation.vllm_generation`) ask the same conversations.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from evaluation.mt_bench_data import DEFAULT_TEMPERATURE, TEMPERATURE_CONFIG, Question

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


def category_temperature(category: str) -> float:
    """FastChat's sampling temperature for a category (0.7 for unknown categories)."""
    return TEMPERATURE_CONFIG.get(category, DEFAULT_TEMPERATURE)


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


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[Question],
    model_id: str,
    *,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
) -> list[dict[str, Any]]:
    """:func:`answer_questions` with a transformers model (the ``hf`` generation backend).

    Args:
        model: Causal LM (its training flag is restored afterwards).
        tokenizer: Its tokenizer, with a chat template.
        questions: Questions to answer.
        model_id: Name recorded as ``model_id``.
        max_new_tokens: Generation budget per turn.
        batch_size: Conversations per ``generate`` call.
        seed: Seed of the sampled categories.

    Returns:
        FastChat ``model_answer`` rows, see :func:`answer_questions`.
    """
    with hf_generator(model, tokenizer, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed) as generate:
        return answer_questions(generate, questions, model_id)


def answer_questions(generate: ChatGenerator, questions: Sequence[Question], model_id: str) -> list[dict[str, Any]]:
    """Answer every turn of every question with any generation backend and return FastChat ``model_answer`` rows.

    Turn ``t`` of all questions is generated before turn ``t + 1``; the conversation for turn 2 holds the
    first question, the model's first answer and the second question. Questions are grouped by category
    temperature (ascending) so each ``generate`` call shares one decoding setting.

    Args:
        generate: The backend: ``(conversations, temperature) -> replies`` (:data:`ChatGenerator`).
        questions: Questions to answer.
        model_id: Name recorded as ``model_id``.

    Returns:
        One row per question: ``question_id``, ``answer_id``, ``model_id``,
        ``choices=[{"index": 0, "turns": [...]}]``, ``tstamp``.
    """
    answers: dict[int | str, list[str]] = {q.question_id: [] for q in questions}
    n_turns = max((len(q.turns) for q in questions), default=0)
    for turn in range(n_turns):
        groups = _temperature_groups(questions, turn)
        for temperature in sorted(groups):
            group = groups[temperature]
            conversations = [_turn_messages(q, turn, answers[q.question_id]) for q in group]
            replies = generate(conversations, temperature)
            for q, reply in zip(group, replies, strict=True):
                answers[q.question_id].append(reply)
    return [
        {
            "question_id": q.question_id,
            "answer_id": uuid.uuid4().hex,
            "model_id": model_id,
            "choices": [{"index": 0, "turns": answers[q.question_id]}],
            "tstamp": time.time(),
        }
        for q in questions
    ]


def _temperature_groups(questions: Sequence[Question], turn: int) -> dict[float, list[Question]]:
    """The questions that have a turn ``turn``, grouped by their category's temperature (in question order)."""
    groups: dict[float, list[Question]] = defaultdict(list)
    for q in questions:
        if len(q.turns) > turn:
            groups[category_temperature(q.category)].append(q)
    return groups


def _turn_messages(question: Question, turn: int, answers: Sequence[str]) -> list[Message]:
    """The conversation that asks turn ``turn``: every earlier turn with the model's own answer, then this turn."""
    messages: list[Message] = []
    for past in range(turn):
        messages.append({"role": "user", "content": question.turns[past]})
        messages.append({"role": "assistant", "content": answers[past]})
    messages.append({"role": "user", "content": question.turns[turn]})
    return messages
