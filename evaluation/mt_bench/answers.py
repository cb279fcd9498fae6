"""MT-Bench answers with any generation backend, as FastChat's ``gen_model_answer.py`` asks them.

Each question's turns are asked in order through the model's chat template, the second turn conditioned on the
model's own first answer; the sampling temperature depends on the category (``TEMPERATURE_CONFIG``; below 1e-4
means greedy decoding). Unlike FastChat, conversations are generated in batches. The turn logic
(:func:`answer_questions`) takes a :data:`evaluation.generation.hf.ChatGenerator`, so the transformers and the
vLLM backends ask the same conversations.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evaluation.generation.hf import ChatGenerator, Message, hf_generator
from evaluation.mt_bench.data import DEFAULT_TEMPERATURE, TEMPERATURE_CONFIG, Question


def category_temperature(category: str) -> float:
    """FastChat's sampling temperature for a category (0.7 for unknown categories)."""
    return TEMPERATURE_CONFIG.get(category, DEFAULT_TEMPERATURE)


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
