"""MT-Bench single-answer grading (Zheng et al., 2023, arXiv:2306.05685) as in FastChat's ``llm_judge``.

Pipeline of :func:`run_mt_bench`:

1. load and validate questions and reference answers (:mod:`evaluation.mt_bench.data`) and judge prompts
   (:mod:`evaluation.mt_bench.prompts`);
2. generate both turns of every question with the policy model
   (:func:`evaluation.mt_bench.answers.answer_questions`, with transformers or vLLM) and write them as
   ``<out_dir>/model_answer/<model_id>.jsonl`` (FastChat ``model_answer`` format);
3. grade turn 1 with ``single-v1`` (``single-math-v1`` with the reference answer for math, reasoning and
   coding) and turn 2 with the ``-multi-turn`` variants, and write
   ``<out_dir>/model_judgment/<judge>_single.jsonl`` (FastChat ``model_judgment`` format);
4. average the valid scores per turn, per category and overall, as FastChat's ``show_result.py`` does
   (the overall score pools both turns); judgments without a rating (score -1) are excluded and counted.

Command line::

    python -m evaluation.mt_bench --model embedded --out runs/mt_bench --max-new-tokens 256
    python -m evaluation.mt_bench --model ./checkpoint --out runs/mt --judge-backend openai \\
        --judge-model gpt-4 --mt-bench-questions hub --judge-prompts hub --reference-answers hub
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evaluation.generation.checkpoint import open_generator
from evaluation.generation.hf import ChatGenerator, hf_generator
from evaluation.judge_client import Judge, OpenAIJudge
from evaluation.mt_bench.answers import answer_questions
from evaluation.mt_bench.config import EvalConfig
from evaluation.mt_bench.data import (
    Question,
    check_references,
    load_questions,
    load_reference_answers,
    resolve_source,
    select_questions,
)
from evaluation.mt_bench.judge import build_judge
from evaluation.mt_bench.prompts import (
    SINGLE_JUDGE_PROMPTS,
    JudgePrompt,
    load_judge_prompts,
    parse_rating,
    rating_to_score,
    render_judge_prompt,
)
from evaluation.options import safe_name

logger = logging.getLogger(__name__)

METRIC_PREFIX = "mt_bench"
SCORES_FILENAME = "mt_bench_scores.json"


@dataclasses.dataclass(frozen=True)
class MTBenchData:
    """Validated inputs of one run.

    Attributes:
        questions: Selected questions (category filter and limit applied).
        prompts: Judge prompts by name.
        references: Reference answer turns by question id.
    """

    questions: list[Question]
    prompts: dict[str, JudgePrompt]
    references: dict[int | str, tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class MTBenchResult:
    """Scores of one MT-Bench run (1-10 scale; NaN where no judgment was valid).

    Attributes:
        overall: Mean of all valid scores, both turns pooled (FastChat's "Average").
        turn_scores: Mean valid score per turn (1 and 2).
        category_scores: Mean valid score per category, both turns pooled.
        n_valid: Number of judgments with a rating.
        n_invalid: Number of judgments without a usable rating (score -1), excluded from the means.
        answers_path: The ``model_answer`` JSONL file.
        judgments_path: The ``model_judgment`` JSONL file.
    """

    overall: float
    turn_scores: dict[int, float]
    category_scores: dict[str, float]
    n_valid: int
    n_invalid: int
    answers_path: Path
    judgments_path: Path

    def as_metrics(self) -> dict[str, float]:
        """Flat metrics: ``mt_bench/score``, ``mt_bench/turn_<t>``, ``mt_bench/category/<c>``,
        ``mt_bench/n_valid``, ``mt_bench/n_invalid``."""
        metrics = {f"{METRIC_PREFIX}/score": self.overall}
        for turn, value in sorted(self.turn_scores.items()):
            metrics[f"{METRIC_PREFIX}/turn_{turn}"] = value
        for category, value in sorted(self.category_scores.items()):
            metrics[f"{METRIC_PREFIX}/category/{category}"] = value
        metrics[f"{METRIC_PREFIX}/n_valid"] = float(self.n_valid)
        metrics[f"{METRIC_PREFIX}/n_invalid"] = float(self.n_invalid)
        return metrics


def load_mt_bench_data(cfg: EvalConfig) -> MTBenchData:
    """Load and cross-check the questions, judge prompts and reference answers named by ``cfg``.

    Raises:
        FileNotFoundError: A file is missing (or the hub download failed).
        ValueError: A file is malformed, a category filter matches nothing, or a reference is missing.
    """
    questions = load_questions(resolve_source(cfg.questions, "questions"))
    questions = select_questions(questions, cfg.categories, cfg.limit)
    prompts = load_judge_prompts(resolve_source(cfg.judge_prompts, "judge_prompts"))
    references = load_reference_answers(resolve_source(cfg.reference_answers, "reference_answers"))
    check_references(questions, references)
    return MTBenchData(questions, prompts, references)


def judge_answers(
    data: MTBenchData,
    answers: dict[int | str, Sequence[str]],
    judge: Judge,
    model_id: str,
    strict_rating_range: bool = True,
) -> list[dict[str, Any]]:
    """Grade the answers and return FastChat ``model_judgment`` records (single mode).

    Turn 1 of every question is graded with ``single-v1`` (``single-math-v1`` plus reference for
    ``NEED_REF_CATS``); turn 2 of two-turn questions with the ``-multi-turn`` variants. All requests go to
    ``judge.complete_batch`` at once.

    Args:
        data: Questions, prompts and references.
        answers: The model's answer turns by question id.
        judge: The judge.
        model_id: Recorded as ``model``.
        strict_rating_range: Record ratings outside [1, 10] as -1 (see ``rating_to_score``).

    Returns:
        Records with ``question_id``, ``model``, ``judge`` ([judge name, prompt name]), ``user_prompt``,
        ``judgment``, ``score`` (-1 if invalid), ``turn``, ``tstamp``.

    Raises:
        ValueError: A question has no answer, or fewer answer turns than question turns.
    """
    jobs: list[tuple[Question, JudgePrompt, bool, str, str]] = []
    for multi_turn in (False, True):
        for q in data.questions:
            turns = answers.get(q.question_id)
            if turns is None or len(turns) < len(q.turns):
                raise ValueError(
                    f"question {q.question_id!r}: expected {len(q.turns)} answer turns, "
                    f"got {None if turns is None else len(turns)}"
                )
            if multi_turn and len(q.turns) != 2:
                continue
            role = ("math" if q.needs_reference else "default") + ("-mt" if multi_turn else "")
            prompt = data.prompts[SINGLE_JUDGE_PROMPTS[role]]
            ref = data.references[q.question_id] if q.needs_reference else None
            system, user = render_judge_prompt(prompt, q, turns, ref, multi_turn)
            jobs.append((q, prompt, multi_turn, system, user))
    replies = judge.complete_batch([(system, user) for *_, system, user in jobs])
    records = []
    for (q, prompt, multi_turn, _, user), reply in zip(jobs, replies, strict=True):
        records.append(
            {
                "question_id": q.question_id,
                "model": model_id,
                "judge": [judge.name, prompt.name],
                "user_prompt": user,
                "judgment": reply,
                "score": rating_to_score(parse_rating(reply), strict_rating_range),
                "turn": 2 if multi_turn else 1,
                "tstamp": time.time(),
            }
        )
    return records


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarize_judgments(
    records: Sequence[dict[str, Any]], categories: dict[int | str, str]
) -> tuple[float, dict[int, float], dict[str, float], int, int]:
    """Average judgment scores as FastChat's ``show_result.py`` (score -1 excluded).

    Args:
        records: ``model_judgment`` records (``question_id``, ``score``, ``turn``).
        categories: Category of every question id.

    Returns:
        ``(overall, turn_scores, category_scores, n_valid, n_invalid)``; a turn or category whose
        judgments are all invalid gets NaN.
    """
    by_turn: dict[int, list[float]] = {}
    by_category: dict[str, list[float]] = {}
    valid: list[float] = []
    for rec in records:
        turn_scores = by_turn.setdefault(int(rec["turn"]), [])
        category_scores = by_category.setdefault(categories[rec["question_id"]], [])
        if rec["score"] == -1:
            continue
        score = float(rec["score"])
        valid.append(score)
        turn_scores.append(score)
        category_scores.append(score)
    return (
        _mean(valid),
        {turn: _mean(v) for turn, v in sorted(by_turn.items())},
        {cat: _mean(v) for cat, v in sorted(by_category.items())},
        len(valid),
        len(records) - len(valid),
    )


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def run_mt_bench(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    cfg: EvalConfig,
    out_dir: Path,
    model_id: str,
    judge: Judge | None = None,
) -> MTBenchResult:
    """Generate answers with ``model``, judge them, and score them.

    Args:
        model: Policy causal LM (its training flag is restored afterwards).
        tokenizer: Its tokenizer, with a chat template.
        cfg: Evaluation settings.
        out_dir: Output directory; receives ``model_answer/<model_id>.jsonl``,
            ``model_judgment/<judge>_single.jsonl`` and ``mt_bench_scores.json`` (existing files are
            replaced).
        model_id: Name of the evaluated model (letters, digits, ``._-``; used as file name).
        judge: Judge to use; None builds the one ``cfg`` selects (and closes it afterwards if it holds a
            network client).

    Returns:
        The scores.

    Raises:
        ValueError: Invalid ``model_id`` or invalid data files.
        FileNotFoundError: Missing data files.
        JudgeError: The judge failed for good.
    """
    _check_model_id(model_id)
    data = load_mt_bench_data(cfg)
    own_judge = judge is None
    if judge is None:
        judge = build_judge(cfg, device=next(model.parameters()).device)
    try:
        answers_path = write_answers(model, tokenizer, cfg, out_dir, model_id, data=data)
        return score_answers(answers_path, cfg, out_dir, model_id, judge=judge, data=data)
    finally:
        if own_judge and isinstance(judge, OpenAIJudge):
            judge.close()


def _check_model_id(model_id: str) -> None:
    if not isinstance(model_id, str) or not model_id or safe_name(model_id) != model_id:
        raise ValueError(f"model_id must be a non-empty name of letters, digits, '.', '_', '-': {model_id!r}")


def write_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    cfg: EvalConfig,
    out_dir: Path,
    model_id: str,
    data: MTBenchData | None = None,
) -> Path:
    """Generate both turns of every question with ``model`` and write ``model_answer/<model_id>.jsonl``.

    The first half of :func:`run_mt_bench` with a loaded transformers model (the ``hf`` backend); a sweep runs
    :func:`write_mt_bench_answers`, which picks the backend, on the trial's resources.

    Returns:
        The answers file.
    """
    with hf_generator(
        model, tokenizer, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.generation_batch_size, seed=cfg.seed
    ) as generate:
        return write_answers_with(generate, cfg, out_dir, model_id, data=data)


def write_answers_with(
    generate: ChatGenerator, cfg: EvalConfig, out_dir: Path, model_id: str, data: MTBenchData | None = None
) -> Path:
    """Answer every question with a generation backend and write ``<out_dir>/model_answer/<model_id>.jsonl``.

    Returns:
        The answers file.
    """
    _check_model_id(model_id)
    data = data or load_mt_bench_data(cfg)
    logger.info("MT-Bench: answering %d questions with %s", len(data.questions), model_id)
    rows = answer_questions(generate, data.questions, model_id)
    answers_path = Path(out_dir) / "model_answer" / f"{model_id}.jsonl"
    _write_jsonl(answers_path, rows)
    return answers_path


def score_answers(
    answers_path: Path,
    cfg: EvalConfig,
    out_dir: Path,
    model_id: str,
    judge: Judge | None = None,
    data: MTBenchData | None = None,
) -> MTBenchResult:
    """Judge a ``model_answer`` file and score it: the second half of :func:`run_mt_bench`.

    A sweep runs this in its driver, so the judge's API key never leaves the driver's environment.

    Returns:
        The scores (also written to ``mt_bench_scores.json``).
    """
    _check_model_id(model_id)
    data = data or load_mt_bench_data(cfg)
    own_judge = judge is None
    if judge is None:
        judge = build_judge(cfg)
    out_dir = Path(out_dir)
    rows = [json.loads(line) for line in Path(answers_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    answers = {row["question_id"]: row["choices"][0]["turns"] for row in rows}
    try:
        logger.info("MT-Bench: judging with %r", judge)
        records = judge_answers(data, answers, judge, model_id, cfg.strict_rating_range)
    finally:
        if own_judge and isinstance(judge, OpenAIJudge):
            judge.close()
    judgments_path = out_dir / "model_judgment" / f"{safe_name(judge.name)}_single.jsonl"
    _write_jsonl(judgments_path, records)
    overall, turn_scores, category_scores, n_valid, n_invalid = summarize_judgments(
        records, {q.question_id: q.category for q in data.questions}
    )
    result = MTBenchResult(
        overall, turn_scores, category_scores, n_valid, n_invalid, Path(answers_path), judgments_path
    )
    summary = {"model_id": model_id, "judge": judge.name, "metrics": result.as_metrics()}
    (out_dir / SCORES_FILENAME).write_text(json.dumps(summary, indent=2) + "\n")
    if n_invalid:
        logger.warning("MT-Bench: %d of %d judgments had no valid rating", n_invalid, n_valid + n_invalid)
    logger.info("MT-Bench: %s", result.as_metrics())
    return result


def format_scores(result: MTBenchResult, model_id: str, judge_name: str) -> str:
    """Render the scores as a plain-text table (FastChat ``show_result.py`` style)."""
    lines = [f"MT-Bench  model={model_id}  judge={judge_name}", ""]
    for turn, value in sorted(result.turn_scores.items()):
        lines.append(f"  turn {turn:<14}{value:6.3f}")
    for category, value in sorted(result.category_scores.items()):
        lines.append(f"  {category:<19}{value:6.3f}")
    lines.append(f"  {'average':<19}{result.overall:6.3f}")
    lines.append("")
    lines.append(f"  valid judgments: {result.n_valid}   invalid (no rating, excluded): {result.n_invalid}")
    lines.append(f"  answers:   {result.answers_path}")
    lines.append(f"  judgments: {result.judgments_path}")
    return "\n".join(lines)


def write_mt_bench_answers(
    model: str,
    dtype: str,
    cfg: EvalConfig,
    out_dir: Path,
    model_id: str,
    *,
    device: str | None = None,
    data: MTBenchData | None = None,
) -> Path:
    """Answer the MT-Bench questions with a saved model and write ``<out_dir>/model_answer/<model_id>.jsonl``.

    Args:
        model: A model spec (a trial's saved policy directory, ``embedded``, a hub id).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        cfg: MT-Bench settings; ``generation_backend`` picks transformers or vLLM.
        out_dir: Output directory.
        model_id: Name of the evaluated model (file name of the answers).
        device: See :func:`evaluation.generation.checkpoint.open_generator`.
        data: Already loaded questions (else loaded here, before any model).

    Returns:
        The answers file.
    """
    data = data or load_mt_bench_data(cfg)
    with open_generator(model, dtype, cfg, seed=cfg.seed, device=device) as generate:
        return write_answers_with(generate, cfg, Path(out_dir), model_id, data=data)
