"""MT-Bench judge prompts in FastChat's format: loading and checking them, rendering a judge request, and parsing
the judge's rating.

Everything here reproduces ``fastchat/llm_judge/common.py`` (lm-sys/FastChat, Apache-2.0):

* ``load_judge_prompts`` reads the same JSONL layout (``judge_prompts.jsonl``: name, type, system_prompt,
  prompt_template, output_format).
* ``render_judge_prompt`` builds the same ``str.format`` keyword arguments as ``run_judge_single``: turn 1
  gets ``question``/``answer``, the multi-turn prompt gets ``question_1``, ``question_2``, ``answer_1``,
  ``answer_2``; reference-based prompts (categories in ``NEED_REF_CATS``) additionally get ``ref_answer_1``
  and ``ref_answer_2``. The system prompt is the prompt's ``system_prompt``.
* ``parse_rating`` applies the same regexes: the first ``[[x]]`` match, else the first ``[x]`` match, else
  -1. FastChat converts the match with ``ast.literal_eval`` (int for ``7``, float for ``8.5``/``7.``); it
  does not check the 1-10 range (``EvalConfig.strict_rating_range`` decides that here). One deliberate
  difference: FastChat crashes (SyntaxError) on a leading-zero integer such as ``[[07]]``; here it is 7.

Unlike FastChat's loader, every row is validated and a malformed row raises ``ValueError`` naming the file,
line and field.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Sequence
from pathlib import Path

from evaluation.mt_bench.data import Question, read_jsonl_rows

SINGLE_JUDGE_PROMPTS = {
    "default": "single-v1",
    "math": "single-math-v1",
    "default-mt": "single-v1-multi-turn",
    "math-mt": "single-math-v1-multi-turn",
}
"""The four prompts of single-answer grading (FastChat's ``make_judge_single``)."""

RATING_OUTPUT_FORMAT = "[[rating]]"
ONE_SCORE_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_PATTERN_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")

_TURN1_FIELDS = frozenset({"question", "answer"})
_MULTI_TURN_FIELDS = frozenset({"question_1", "question_2", "answer_1", "answer_2"})
_REF_FIELDS = frozenset({"ref_answer_1", "ref_answer_2"})


@dataclasses.dataclass(frozen=True)
class JudgePrompt:
    """One row of ``judge_prompts.jsonl``.

    Attributes:
        name: Prompt name, e.g. ``"single-v1"``.
        type: ``"single"`` or ``"pairwise"``.
        system_prompt: System message sent to the judge.
        prompt_template: ``str.format`` template of the user message.
        output_format: How the judge reports its verdict, ``"[[rating]]"`` for single grading.
        category: Optional prompt category (``"general"``/``"math"``).
        description: Optional free text.
    """

    name: str
    type: str
    system_prompt: str
    prompt_template: str
    output_format: str
    category: str | None = None
    description: str | None = None

    @property
    def fields(self) -> frozenset[str]:
        """The placeholder names used by ``prompt_template``."""
        return _template_fields(self.prompt_template)


def _template_fields(template: str) -> frozenset[str]:
    """Placeholder names of a ``str.format`` template; raises ValueError on malformed braces."""
    return frozenset(f for _, f, _, _ in string.Formatter().parse(template) if f is not None)


def load_judge_prompts(path: Path) -> dict[str, JudgePrompt]:
    """Read a FastChat ``judge_prompts.jsonl`` and check the four single-grading prompts.

    Args:
        path: JSONL file of prompts (``name``, ``type``, ``system_prompt``, ``prompt_template``,
            ``output_format``; ``category`` and ``description`` optional). Pairwise prompts may be present.

    Returns:
        Prompts by name.

    Raises:
        ValueError: A row is malformed, a name repeats, a single-grading prompt is missing, has the wrong
            type/output format, or uses a placeholder FastChat does not provide for it.
    """
    path = Path(path)
    prompts: dict[str, JudgePrompt] = {}
    for line_no, row in read_jsonl_rows(path):
        for field in ("name", "type", "system_prompt", "prompt_template", "output_format"):
            if not isinstance(row.get(field), str):
                raise ValueError(f"{path}:{line_no}: field '{field}' must be a string: {row.get(field)!r}")
        for field in ("category", "description"):
            if row.get(field) is not None and not isinstance(row[field], str):
                raise ValueError(f"{path}:{line_no}: field '{field}' must be a string, got {row[field]!r}")
        name = row["name"]
        if name in prompts:
            raise ValueError(f"{path}:{line_no}: duplicate prompt name {name!r}")
        try:
            _template_fields(row["prompt_template"])
        except ValueError as err:
            raise ValueError(f"{path}:{line_no}: prompt {name!r} has a malformed template ({err})") from err
        prompts[name] = JudgePrompt(
            name=name,
            type=row["type"],
            system_prompt=row["system_prompt"],
            prompt_template=row["prompt_template"],
            output_format=row["output_format"],
            category=row.get("category"),
            description=row.get("description"),
        )
    for role, name in SINGLE_JUDGE_PROMPTS.items():
        if name not in prompts:
            raise ValueError(f"{path}: missing judge prompt {name!r} (needed for single-answer grading)")
        prompt = prompts[name]
        if prompt.type != "single":
            raise ValueError(f"{path}: judge prompt {name!r} must have type 'single', got {prompt.type!r}")
        if prompt.output_format != RATING_OUTPUT_FORMAT:
            raise ValueError(
                f"{path}: judge prompt {name!r} must have output_format {RATING_OUTPUT_FORMAT!r}, "
                f"got {prompt.output_format!r}"
            )
        allowed = _MULTI_TURN_FIELDS if role.endswith("-mt") else _TURN1_FIELDS
        if role.startswith("math"):
            allowed = allowed | _REF_FIELDS
        unknown = prompt.fields - allowed
        if unknown:
            raise ValueError(
                f"{path}: judge prompt {name!r} uses placeholders {sorted(unknown)}; "
                f"only {sorted(allowed)} are filled in"
            )
    return prompts


def render_judge_prompt(
    prompt: JudgePrompt,
    question: Question,
    answer_turns: Sequence[str],
    ref_turns: Sequence[str] | None,
    multi_turn: bool,
) -> tuple[str, str]:
    """Render the judge request exactly as FastChat's ``run_judge_single`` does.

    Args:
        prompt: The judge prompt (``single-v1`` etc.).
        question: The question.
        answer_turns: The model's answers, one per turn.
        ref_turns: Reference answers for reference-based prompts, else None.
        multi_turn: False grades turn 1; True renders the whole two-turn conversation (grades turn 2).

    Returns:
        ``(system_prompt, user_prompt)``.
    """
    kwargs: dict[str, str] = {}
    if ref_turns is not None:
        kwargs["ref_answer_1"] = ref_turns[0]
        if len(ref_turns) > 1:
            kwargs["ref_answer_2"] = ref_turns[1]
    if multi_turn:
        user_prompt = prompt.prompt_template.format(
            question_1=question.turns[0],
            question_2=question.turns[1],
            answer_1=answer_turns[0],
            answer_2=answer_turns[1],
            **kwargs,
        )
    else:
        user_prompt = prompt.prompt_template.format(question=question.turns[0], answer=answer_turns[0], **kwargs)
    return prompt.system_prompt, user_prompt


def parse_rating(judgment: str) -> int | float:
    """Extract the rating from a judge reply with FastChat's rules.

    The first ``[[x]]`` wins; without one, the first ``[x]``; without either, -1. ``x`` is an unsigned
    decimal (``7``, ``8.5``, ``7.``); it becomes an int when it has no decimal point, else a float.

    Args:
        judgment: The judge's reply.

    Returns:
        The rating, or -1 when the reply has none. The value is not range-checked (see ``rating_to_score``).
    """
    match = ONE_SCORE_PATTERN.search(judgment) or ONE_SCORE_PATTERN_BACKUP.search(judgment)
    if match is None:
        return -1
    text = match.group(1)
    return float(text) if "." in text else int(text)


def rating_to_score(rating: int | float, strict_range: bool) -> int | float:
    """Map a parsed rating to the recorded score: -1 stays -1; outside [1, 10] becomes -1 when strict."""
    if rating == -1:
        return -1
    if strict_range and not 1 <= rating <= 10:
        return -1
    return rating
