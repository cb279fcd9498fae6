"""MT-Bench data in FastChat's formats: questions, model answers and reference answers, and where to find them.

Everything here reproduces ``fastchat/llm_judge/common.py`` (lm-sys/FastChat, Apache-2.0):

* ``load_questions`` / ``load_model_answers`` read the same JSONL layouts (``question.jsonl``: question_id,
  category, turns, optional reference; ``model_answer``: question_id, model_id, choices[0].turns); reference answers
  are ``model_answer`` files. Judge prompts and rating parsing are in :mod:`evaluation.mt_bench.prompts`.
* ``TEMPERATURE_CONFIG`` and ``NEED_REF_CATS`` are FastChat's answer temperatures and reference-graded categories.

Unlike FastChat's loaders, every row is validated and a malformed row raises ``ValueError`` naming the file,
line and field.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.options import HUB

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
DATA_DIR = Path(__file__).resolve().parents[1] / "data"


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


def read_jsonl_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Non-blank rows of a JSONL file as ``(line number, object)``; ``ValueError`` on a bad line or no rows."""
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
    for line_no, row in read_jsonl_rows(path):
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
    for line_no, row in read_jsonl_rows(path):
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
