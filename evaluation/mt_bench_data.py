"""MT-Bench data in FastChat's formats: questions, judge prompts, reference answers, prompt rendering and
rating parsing.

Everything here reproduces ``fastchat/llm_judge/common.py`` (lm-sys/FastChat, Apache-2.0):

* ``load_questions`` / ``load_judge_prompts`` / ``load_model_answers`` read the same JSONL layouts
  (``question.jsonl``: question_id, category, turns, optional reference; ``judge_prompts.jsonl``: name, type,
  system_prompt, prompt_template, output_format; ``model_answer``: question_id, model_id, choices[0].turns).
* ``render_judge_prompt`` builds the same ``str.format`` keyword arguments as ``run_judge_single``: turn 1
  gets ``question``/``answer``, the multi-turn prompt gets ``question_1``, ``question_2``, ``answer_1``,
  ``answer_2``; reference-based prompts (categories in ``NEED_REF_CATS``) additionally get ``ref_answer_1``
  and ``ref_answer_2``. The system prompt is the prompt's ``system_prompt``.
* ``parse_rating`` applies the same regexes: the first ``[[x]]`` match, else the first ``[x]`` match, else
  -1. FastChat converts the match with ``ast.literal_eval`` (int for ``7``, float for ``8.5``/``7.``); it
  does not check the 1-10 range (``EvalConfig.strict_rating_range`` decides that here). One deliberate
  difference: FastChat crashes (SyntaxError) on a leading-zero integer such as ``[[07]]``; here it is 7.

Unlike FastChat's loaders, every row is validated and a malformed row raises ``ValueError`` naming the file,
line and field.
"""

from __future__ import annotations

import dataclasses
import json
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.config import HUB

NEED_REF_CATS = ("math", "reasoning", "coding")
"""Categories judged against a reference answer (FastChat's ``NEED_REF_CATS``)."""

TEMPERATURE_CONFIG = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
"""Answer sampling temperature per category (FastChat's ``temperature_config``)."""

DEFAULT_TEMPERATURE = 0.7
"""Temperature of a category missing from ``TEMPERATURE_CONFIG`` (as in ``gen_model_answer.py``)."""

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

HUB_REPO_ID = "lmsys/mt-bench"
HUB_REPO_TYPE = "space"
HUB_FILES = {
    "questions": "data/mt_bench/question.jsonl",
    "judge_prompts": "data/judge_prompts.jsonl",
    "reference_answers": "data/mt_bench/reference_answer/gpt-4.jsonl",
}
BUNDLED_FILES = {
    "questions": "question.jsonl",
    "judge_prompts": "judge_prompts.jsonl",
    "reference_answers": "reference_answer.jsonl",
}
DATA_DIR = Path(__file__).resolve().parent / "data"

_TURN1_FIELDS = frozenset({"question", "answer"})
_MULTI_TURN_FIELDS = frozenset({"question_1", "question_2", "answer_1", "answer_2"})
_REF_FIELDS = frozenset({"ref_answer_1", "ref_answer_2"})


@dataclasses.dataclass(frozen=True)
class Question:
    """One MT-Bench question.

    Attributes:
        question_id: Identifier (an int in the official files).
        category: Category name, e.g. ``"math"``.
        turns: The user turns (MT-Bench has two; the second is a follow-up).
        reference: Optional short reference per turn carried in ``question.jsonl`` (informational; judging
            uses the reference-answer file as FastChat does).
    """

    question_id: int | str
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None = None

    @property
    def needs_reference(self) -> bool:
        """Whether the question is judged against a reference answer."""
        return self.category in NEED_REF_CATS


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


def resolve_source(source: str | None, kind: str) -> Path:
    """Turn an ``EvalConfig`` data source into a local file path.

    Args:
        source: None (bundled file), ``"hub"`` (official file from the ``lmsys/mt-bench`` Space) or a path.
        kind: ``"questions"``, ``"judge_prompts"`` or ``"reference_answers"``.

    Returns:
        Path of an existing file.

    Raises:
        FileNotFoundError: The path does not exist or the hub file cannot be fetched.
    """
    if kind not in BUNDLED_FILES:
        raise ValueError(f"unknown MT-Bench data kind {kind!r}; expected one of {sorted(BUNDLED_FILES)}")
    if source is None:
        return DATA_DIR / BUNDLED_FILES[kind]
    if source == HUB:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(HUB_REPO_ID, HUB_FILES[kind], repo_type=HUB_REPO_TYPE))
        except Exception as err:  # network, offline mode, missing file: all end the same way for the user
            raise FileNotFoundError(
                f"could not fetch the official MT-Bench {kind} file {HUB_FILES[kind]!r} from the Hugging "
                f"Face Space {HUB_REPO_ID!r} ({type(err).__name__}: {err}). Pass a local FastChat file "
                "instead, or allow network access (HF_HUB_OFFLINE unset)."
            ) from err
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"MT-Bench {kind} file not found: {path}")
    return path


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: invalid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            rows.append((line_no, row))
    if not rows:
        raise ValueError(f"{path}: file has no rows")
    return rows


def _question_id(path: Path, line_no: int, row: dict[str, Any]) -> int | str:
    if "question_id" not in row:
        raise ValueError(f"{path}:{line_no}: missing field 'question_id'")
    qid = row["question_id"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or (isinstance(qid, str) and not qid):
        raise ValueError(f"{path}:{line_no}: field 'question_id' must be an int or non-empty string: {qid!r}")
    return qid


def _string_list(path: Path, line_no: int, field: str, value: Any, allow_empty: bool) -> tuple[str, ...]:
    where = f"{path}:{line_no}: field '{field}'"
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} must be a non-empty list of strings, got {value!r}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or (not allow_empty and not item.strip()):
            raise ValueError(f"{where}[{i}] must be a non-empty string, got {item!r}")
    return tuple(value)


def load_questions(path: Path) -> list[Question]:
    """Read a FastChat ``question.jsonl``.

    Args:
        path: JSONL file; each row has ``question_id``, ``category``, ``turns`` (one or two strings) and
            optionally ``reference`` (a list of strings).

    Returns:
        Questions in file order.

    Raises:
        ValueError: A row is malformed (names the line and field) or a question id repeats.
    """
    path = Path(path)
    questions: list[Question] = []
    seen: dict[int | str, int] = {}
    for line_no, row in _read_jsonl(path):
        qid = _question_id(path, line_no, row)
        if qid in seen:
            raise ValueError(f"{path}:{line_no}: duplicate question_id {qid!r} (first on line {seen[qid]})")
        seen[qid] = line_no
        category = row.get("category")
        if not isinstance(category, str) or not category.strip():
            raise ValueError(f"{path}:{line_no}: field 'category' must be a non-empty string: {category!r}")
        turns = _string_list(path, line_no, "turns", row.get("turns"), allow_empty=False)
        if len(turns) > 2:
            raise ValueError(f"{path}:{line_no}: field 'turns' has {len(turns)} turns; MT-Bench uses 1 or 2")
        reference = None
        if row.get("reference") is not None:
            reference = _string_list(path, line_no, "reference", row["reference"], allow_empty=True)
        questions.append(Question(qid, category, turns, reference))
    return questions


def select_questions(
    questions: Sequence[Question], categories: Sequence[str] | None, limit: int | None
) -> list[Question]:
    """Apply the category filter, then keep the first ``limit`` questions (FastChat's ``--first-n``).

    Raises:
        ValueError: A requested category has no question.
    """
    selected = list(questions)
    if categories is not None:
        present = {q.category for q in questions}
        missing = [c for c in categories if c not in present]
        if missing:
            raise ValueError(f"categories {missing} have no questions; available: {sorted(present)}")
        selected = [q for q in selected if q.category in categories]
    if limit is not None:
        selected = selected[:limit]
    return selected


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
    for line_no, row in _read_jsonl(path):
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


def load_model_answers(path: Path) -> dict[int | str, dict[str, Any]]:
    """Read one FastChat ``model_answer`` JSONL file (also the format of reference answers).

    Args:
        path: JSONL file; each row has ``question_id``, ``model_id`` and ``choices`` whose first entry has
            ``turns`` (a list of strings).

    Returns:
        Rows by question id (a later row for the same id wins, as in FastChat).

    Raises:
        ValueError: A row is malformed (names the line and field).
    """
    path = Path(path)
    answers: dict[int | str, dict[str, Any]] = {}
    for line_no, row in _read_jsonl(path):
        qid = _question_id(path, line_no, row)
        if not isinstance(row.get("model_id"), str):
            raise ValueError(f"{path}:{line_no}: field 'model_id' must be a string: {row.get('model_id')!r}")
        choices = row.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ValueError(f"{path}:{line_no}: field 'choices' must be a non-empty list of objects")
        _string_list(path, line_no, "choices[0].turns", choices[0].get("turns"), allow_empty=True)
        answers[qid] = row
    return answers


def load_reference_answers(path: Path) -> dict[int | str, tuple[str, ...]]:
    """Read reference answers (``model_answer`` format) as ``question_id -> turns``."""
    return {qid: tuple(row["choices"][0]["turns"]) for qid, row in load_model_answers(path).items()}


def check_references(questions: Sequence[Question], references: dict[int | str, tuple[str, ...]]) -> None:
    """Check that every reference-graded question has a reference answer for each of its turns.

    Raises:
        ValueError: Names the first question without a (complete) reference.
    """
    for q in questions:
        if not q.needs_reference:
            continue
        ref = references.get(q.question_id)
        if ref is None:
            raise ValueError(
                f"question {q.question_id!r} (category {q.category!r}) needs a reference answer but the "
                "reference-answer file has none"
            )
        if len(ref) < len(q.turns):
            raise ValueError(
                f"question {q.question_id!r} has {len(q.turns)} turns but its reference answer has {len(ref)}"
            )


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
