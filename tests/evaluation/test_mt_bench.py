"""MT-Bench: FastChat formats on the real files, rendering and rating parsing as FastChat does them, the
bundled data, answer generation, aggregation, ``run_mt_bench`` end to end and the CLI."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from evaluation.generation.hf import chat_generate, inference_mode
from evaluation.mt_bench.__main__ import main
from evaluation.mt_bench.answers import generate_answers
from evaluation.mt_bench.config import EvalConfig
from evaluation.mt_bench.data import (
    NEED_REF_CATS,
    check_references,
    load_model_answers,
    load_questions,
    load_reference_answers,
    resolve_source,
    select_questions,
)
from evaluation.mt_bench.judge import LocalJudge
from evaluation.mt_bench.pipeline import (
    MTBenchData,
    judge_answers,
    load_mt_bench_data,
    run_mt_bench,
    summarize_judgments,
)
from evaluation.mt_bench.prompts import (
    SINGLE_JUDGE_PROMPTS,
    load_judge_prompts,
    parse_rating,
    rating_to_score,
    render_judge_prompt,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CATEGORIES = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}
JUDGMENT_KEYS = {"question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"}


@pytest.fixture(scope="module")
def real(shared_dir: Path) -> MTBenchData:
    """The real FastChat MT-Bench files from ../shared/mt_bench."""
    base = shared_dir / "mt_bench"
    return MTBenchData(
        load_questions(base / "question.jsonl"),
        load_judge_prompts(base / "judge_prompts.jsonl"),
        load_reference_answers(base / "reference_answer_gpt-4.jsonl"),
    )


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir: Path):
    from trainers.models import load_model

    return load_model(str(tiny_model_dir))


def _question(data: MTBenchData, qid: int):
    return next(q for q in data.questions if q.question_id == qid)


# ---------------------------------------------------------------- real FastChat files


def test_real_files_load(real: MTBenchData) -> None:
    assert len(real.questions) == 80
    counts = pd.Series([q.category for q in real.questions]).value_counts().to_dict()
    assert counts == dict.fromkeys(CATEGORIES, 10)
    assert all(len(q.turns) == 2 for q in real.questions)
    assert len(real.prompts) == 8
    assert set(SINGLE_JUDGE_PROMPTS.values()) <= set(real.prompts)
    assert len(real.references) == 30
    ref_ids = {q.question_id for q in real.questions if q.category in NEED_REF_CATS}
    assert set(real.references) == ref_ids
    check_references(real.questions, real.references)


def test_real_single_v1_renders_as_fastchat(real: MTBenchData) -> None:
    q = _question(real, 81)
    answer = "Aloha! {question} and {0} stay literal."
    system, user = render_judge_prompt(real.prompts["single-v1"], q, [answer, "unused"], None, multi_turn=False)
    # Built from the text of FastChat's single-v1 prompt, independently of str.format.
    expected = (
        "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided "
        "by an AI assistant to the user question displayed below. Your evaluation should consider factors "
        "such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the "
        "response. Begin your evaluation by providing a short explanation. Be as objective as possible. "
        "After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly "
        'following this format: "[[rating]]", for example: "Rating: [[5]]".\n\n'
        "[Question]\n" + q.turns[0] + "\n\n"
        "[The Start of Assistant's Answer]\n" + answer + "\n[The End of Assistant's Answer]"
    )
    assert system == "You are a helpful assistant."
    assert user == expected


def test_real_single_math_v1_renders_reference(real: MTBenchData) -> None:
    q = _question(real, 101)  # reasoning: graded against GPT-4's reference
    assert q.category == "reasoning"
    ref = real.references[101]
    system, user = render_judge_prompt(real.prompts["single-math-v1"], q, ["I am first.", "x"], ref, False)
    head = real.prompts["single-math-v1"].prompt_template.split("[Question]")[0]
    expected = (
        head + "[Question]\n" + q.turns[0] + "\n\n"
        "[The Start of Reference Answer]\n" + ref[0] + "\n[The End of Reference Answer]\n\n"
        "[The Start of Assistant's Answer]\nI am first.\n[The End of Assistant's Answer]"
    )
    assert head.startswith("[Instruction]\nPlease act as an impartial judge") and "reference answer" in head
    assert system == "You are a helpful assistant."
    assert user == expected


def test_real_multi_turn_prompts_render_as_fastchat(real: MTBenchData) -> None:
    q = _question(real, 111)  # math
    ref = real.references[111]
    answers = ["Area is {3}.", "Circle area ~ 8."]
    system, user = render_judge_prompt(real.prompts["single-math-v1-multi-turn"], q, answers, ref, True)
    assert system == real.prompts["single-math-v1-multi-turn"].system_prompt
    assert system.startswith("Please act as an impartial judge") and "second question" in system
    expected = (
        "<|The Start of Reference Answer|>\n\n"
        "### User:\n" + q.turns[0] + "\n\n### Reference answer:\n" + ref[0] + "\n\n"
        "### User:\n" + q.turns[1] + "\n\n### Reference answer:\n" + ref[1] + "\n\n"
        "<|The End of Reference Answer|>\n\n\n"
        "<|The Start of Assistant A's Conversation with User|>\n\n"
        "### User:\n" + q.turns[0] + "\n\n### Assistant A:\n" + answers[0] + "\n\n"
        "### User:\n" + q.turns[1] + "\n\n### Assistant A:\n" + answers[1] + "\n\n"
        "<|The End of Assistant A's Conversation with User|>"
    )
    assert user == expected

    q = _question(real, 91)  # roleplay: general multi-turn prompt, no reference
    system, user = render_judge_prompt(real.prompts["single-v1-multi-turn"], q, answers, None, True)
    assert "second user question" in system
    assert user == (
        "<|The Start of Assistant A's Conversation with User|>\n\n"
        "### User:\n" + q.turns[0] + "\n\n### Assistant A:\n" + answers[0] + "\n\n"
        "### User:\n" + q.turns[1] + "\n\n### Assistant A:\n" + answers[1] + "\n\n"
        "<|The End of Assistant A's Conversation with User|>"
    )


def _fastchat_rating(judgment: str):
    """FastChat's run_judge_single parsing, transcribed from fastchat/llm_judge/common.py."""
    match = re.search(re.compile(r"\[\[(\d+\.?\d*)\]\]"), judgment)
    if not match:
        match = re.search(re.compile(r"\[(\d+\.?\d*)\]"), judgment)
    return ast.literal_eval(match.groups()[0]) if match else -1


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("The answer is good. Rating: [[7]]", 7),
        ("Rating: [[8.5]]", 8.5),
        ("Rating: [[10]]", 10),
        ("Rating: [[7.]]", 7.0),
        ("I would give it [7] overall.", 7),  # fallback single brackets
        ("no rating here", -1),
        ("Rating: 7/10", -1),
        ("Rating: [[ 7 ]]", -1),
        ("Rating: [[7/10]]", -1),
        ("Rating: [[-3]]", -1),
        ("First [[3]], on reflection [[9]]", 3),  # the first [[x]] wins
        ("See [2] ... final Rating: [[8]]", 8),  # any [[x]] beats an earlier [x]
        ("Scores [2] and [6]", 2),
        ("Rating: [[0]]", 0),  # FastChat does not range-check
        ("Rating: [[15]]", 15),
        ("", -1),
    ],
)
def test_parse_rating_agrees_with_fastchat(reply: str, expected) -> None:
    rating = parse_rating(reply)
    assert rating == expected == _fastchat_rating(reply)
    assert type(rating) is type(_fastchat_rating(reply))


@pytest.mark.parametrize(
    ("rating", "strict", "score"),
    [(7, True, 7), (8.5, True, 8.5), (1, True, 1), (10, True, 10), (0, True, -1), (15, True, -1),
     (10.5, True, -1), (-1, True, -1), (15, False, 15), (0, False, 0), (-1, False, -1)],
)  # fmt: skip
def test_rating_to_score(rating, strict: bool, score) -> None:
    assert rating_to_score(rating, strict) == score


# ---------------------------------------------------------------- bundled data


def test_bundled_data_covers_categories_with_two_turns() -> None:
    data = load_mt_bench_data(EvalConfig())
    assert {q.category for q in data.questions} == CATEGORIES
    per_category = pd.Series([q.category for q in data.questions]).value_counts()
    assert (per_category >= 2).all()
    assert all(len(q.turns) == 2 and all(t.strip() for t in q.turns) for q in data.questions)
    ref_questions = [q for q in data.questions if q.needs_reference]
    assert {q.category for q in ref_questions} == set(NEED_REF_CATS)
    assert all(len(data.references[q.question_id]) == 2 for q in ref_questions)
    assert set(SINGLE_JUDGE_PROMPTS.values()) == set(data.prompts)


def test_bundled_prompts_match_fastchat_layout_but_not_text(real: MTBenchData) -> None:
    data = load_mt_bench_data(EvalConfig())
    # Same prompt names, types, output format and placeholders as FastChat's real prompts.
    for name in SINGLE_JUDGE_PROMPTS.values():
        ours, theirs = data.prompts[name], real.prompts[name]
        assert (ours.type, ours.output_format, ours.fields) == (
            theirs.type,
            theirs.output_format,
            theirs.fields,
        )
    # Our own writing: no question or prompt text copied from FastChat's files.
    real_turns = {t for q in real.questions for t in q.turns}
    assert not real_turns & {t for q in data.questions for t in q.turns}
    assert not {p.prompt_template for p in real.prompts.values()} & {p.prompt_template for p in data.prompts.values()}


def test_bundled_files_ship_in_package_data() -> None:
    import fnmatch
    import tomllib

    globs = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "evaluation"
    ]
    for kind in ("questions", "judge_prompts", "reference_answers"):
        path = resolve_source(None, kind)
        assert path.parent == REPO_ROOT / "evaluation" / "data" and path.suffix == ".jsonl"
        assert any(fnmatch.fnmatch(f"data/{path.name}", glob) for glob in globs)


def test_select_questions_filters_then_limits() -> None:
    questions = load_questions(resolve_source(None, "questions"))
    picked = select_questions(questions, ("math", "writing"), limit=3)
    assert [q.category for q in picked] == ["writing", "writing", "math"]
    with pytest.raises(ValueError, match=r"categories \['poetry'\] have no questions"):
        select_questions(questions, ("poetry",), None)


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            ['{"question_id": 1, "category": "math", "turns": ["a", "b"]}', "{oops"],
            r"q\.jsonl:2: invalid JSON",
        ),
        ([{"question_id": 1, "turns": ["a"]}], r"q\.jsonl:1: field 'category'"),
        ([{"question_id": 1, "category": "math", "turns": "a"}], r"q\.jsonl:1: field 'turns' must be"),
        ([{"question_id": 1, "category": "math", "turns": ["a", ""]}], r"field 'turns'\[1\] must be"),
        ([{"question_id": 1, "category": "math", "turns": ["a", "b", "c"]}], r"has 3 turns"),
        ([{"category": "math", "turns": ["a"]}], r"q\.jsonl:1: missing field 'question_id'"),
        ([{"question_id": True, "category": "math", "turns": ["a"]}], r"field 'question_id' must be"),
        (
            [
                {"question_id": 1, "category": "x", "turns": ["a"]},
                {"question_id": 1, "category": "x", "turns": ["b"]},
            ],
            r"q\.jsonl:2: duplicate question_id 1 \(first on line 1\)",
        ),
    ],
)
def test_question_loader_names_row_and_field(tmp_path: Path, rows: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_questions(_write(tmp_path / "q.jsonl", rows))


def _prompt(name: str, template: str, **overrides) -> dict:
    row = {"name": name, "type": "single", "system_prompt": "s", "prompt_template": template}
    row["output_format"] = "[[rating]]"
    row.update(overrides)
    return row


def _valid_prompts() -> list[dict]:
    return [
        _prompt("single-v1", "{question} {answer}"),
        _prompt("single-math-v1", "{question} {ref_answer_1} {answer}"),
        _prompt("single-v1-multi-turn", "{question_1} {answer_1} {question_2} {answer_2}"),
        _prompt("single-math-v1-multi-turn", "{question_1} {ref_answer_2} {answer_2}"),
    ]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda rows: rows[1:], r"missing judge prompt 'single-v1'"),
        (lambda rows: [_prompt("single-v1", "{question} {answer}", output_format="[[A]]"), *rows[1:]],
         r"'single-v1' must have output_format '\[\[rating\]\]'"),
        (lambda rows: [_prompt("single-v1", "{question} {answer}", type="pairwise"), *rows[1:]],
         r"'single-v1' must have type 'single'"),
        (lambda rows: [_prompt("single-v1", "{question} {ref_answer_1}"), *rows[1:]],
         r"'single-v1' uses placeholders \['ref_answer_1'\]"),
        (lambda rows: [_prompt("single-v1", "{question"), *rows[1:]], r"p\.jsonl:1: prompt 'single-v1' has"),
        (lambda rows: [{**rows[0], "system_prompt": None}, *rows[1:]], r"p\.jsonl:1: field 'system_prompt'"),
        (lambda rows: [*rows, rows[0]], r"p\.jsonl:5: duplicate prompt name 'single-v1'"),
    ],
)  # fmt: skip
def test_judge_prompt_loader_rejects_bad_prompts(tmp_path: Path, mutate, message: str) -> None:
    assert set(load_judge_prompts(_write(tmp_path / "ok.jsonl", _valid_prompts()))) == set(
        SINGLE_JUDGE_PROMPTS.values()
    )
    with pytest.raises(ValueError, match=message):
        load_judge_prompts(_write(tmp_path / "p.jsonl", mutate(_valid_prompts())))


def test_reference_answers_validation(tmp_path: Path) -> None:
    good = {"question_id": 7, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["r1", "r2"]}]}
    assert load_reference_answers(_write(tmp_path / "r.jsonl", [good])) == {7: ("r1", "r2")}
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: field 'choices' must be"):
        load_reference_answers(_write(tmp_path / "bad.jsonl", [good, {**good, "choices": []}]))
    with pytest.raises(ValueError, match=r"field 'choices\[0\]\.turns' must be"):
        load_reference_answers(_write(tmp_path / "bad2.jsonl", [{**good, "choices": [{"turns": "x"}]}]))
    questions = load_questions(
        _write(tmp_path / "q.jsonl", [{"question_id": 8, "category": "coding", "turns": ["a", "b"]}])
    )
    with pytest.raises(ValueError, match=r"question 8 \(category 'coding'\) needs a reference answer"):
        check_references(questions, {7: ("r1", "r2")})
    with pytest.raises(ValueError, match=r"question 8 has 2 turns but its reference answer has 1"):
        check_references(questions, {8: ("r1",)})


def test_missing_data_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"MT-Bench questions file not found: .*nope\.jsonl"):
        load_mt_bench_data(EvalConfig(questions=str(tmp_path / "nope.jsonl")))


def test_hub_source_fails_clearly_offline() -> None:
    # HF_HUB_OFFLINE=1 (conftest), nothing cached: the real hub code path must fail with a clear message.
    with pytest.raises(FileNotFoundError, match=r"'data/mt_bench/question\.jsonl' from the Hugging Face Space"):
        resolve_source("hub", "questions")


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, r"limit must be a positive integer"),
        ({"max_new_tokens": -5}, r"max_new_tokens"),
        ({"generation_batch_size": 1.5}, r"generation_batch_size"),
        ({"categories": "math"}, r"categories must be a list"),
        ({"categories": ()}, r"categories must not be empty"),
        ({"categories": ("math", "math")}, r"duplicates"),
        ({"judge_backend": "anthropic"}, r"judge_backend must be one of"),
        ({"judge_base_url": "http://x/v1"}, r"judge_base_url only applies to judge_backend='openai'"),
        ({"judge_backend": "openai", "judge_base_url": "localhost:8000"}, r"must be an http\(s\) URL"),
        ({"timeout_s": 0}, r"timeout_s must be a finite number > 0"),
        ({"max_retries": -1}, r"max_retries"),
        ({"backoff_s": 5.0, "backoff_max_s": 1.0}, r"backoff_max_s"),
        ({"questions": ""}, r"questions must be None"),
        ({"judge_model": ""}, r"judge_model"),
        ({"strict_rating_range": "yes"}, r"strict_rating_range"),
        ({"local_judge_force_rating": 1}, r"local_judge_force_rating must be a bool"),
        ({"judge_max_tokens": 0}, r"judge_max_tokens must be a positive integer"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EvalConfig(**kwargs)


def test_config_defaults_and_key_hygiene(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-5f1d2c7e9a0b4b39"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    local = EvalConfig()
    assert (local.resolved_judge_model, local.resolved_judge_max_tokens) == ("embedded", 256)
    assert local.local_judge_force_rating
    cfg = dataclasses.replace(local, judge_backend="openai", categories=["math"])
    assert (cfg.resolved_judge_model, cfg.resolved_judge_max_tokens, cfg.categories) == ("gpt-4", 2048, ("math",))
    assert EvalConfig(judge_model="m", judge_max_tokens=7).resolved_judge_max_tokens == 7
    assert secret not in repr(cfg) and secret not in json.dumps(dataclasses.asdict(cfg))
    with pytest.raises(ValueError, match="NAME of an environment variable") as err:
        EvalConfig(api_key_env=secret)
    assert secret not in str(err.value)


# ---------------------------------------------------------------- aggregation


def test_summarize_matches_fastchat_show_result() -> None:
    categories = {1: "math", 2: "math", 3: "writing"}
    records = [
        {"question_id": 1, "score": 8, "turn": 1},
        {"question_id": 2, "score": 6.5, "turn": 1},
        {"question_id": 3, "score": -1, "turn": 1},
        {"question_id": 1, "score": 3, "turn": 2},
        {"question_id": 2, "score": -1, "turn": 2},
        {"question_id": 3, "score": 9, "turn": 2},
    ]
    overall, turns, cats, n_valid, n_invalid = summarize_judgments(records, categories)
    # FastChat's show_result.py: drop score == -1, mean per turn, "Average" pools both turns.
    df = pd.DataFrame(records)
    df = df[df["score"] != -1]
    assert overall == pytest.approx(df["score"].mean())
    assert turns == pytest.approx(df.groupby("turn")["score"].mean().to_dict())
    assert cats == pytest.approx({"math": (8 + 6.5 + 3) / 3, "writing": 9.0})
    assert (n_valid, n_invalid) == (4, 2)
    overall, turns, cats, n_valid, n_invalid = summarize_judgments(records[2:3], categories)
    assert math.isnan(overall) and math.isnan(turns[1]) and math.isnan(cats["writing"])
    assert (n_valid, n_invalid) == (0, 1)


# ---------------------------------------------------------------- generation and end to end


def test_generate_answers_tiny_model(tiny_model, tokenizer) -> None:
    data = load_mt_bench_data(EvalConfig(categories=("writing", "math", "stem")))
    tiny_model.train()
    kwargs = {"max_new_tokens": 6, "batch_size": 1, "seed": 3}
    rows = generate_answers(tiny_model, tokenizer, data.questions, "tiny", **kwargs)
    assert tiny_model.training, "the caller's training flag must be restored"
    assert [r["question_id"] for r in rows] == [q.question_id for q in data.questions]
    for row in rows:
        assert set(row) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
        assert row["model_id"] == "tiny" and row["choices"][0]["index"] == 0
        assert len(row["choices"][0]["turns"]) == 2
        assert all(isinstance(t, str) for t in row["choices"][0]["turns"])
    assert len({r["answer_id"] for r in rows}) == len(rows)
    # Same seed, same answers (writing is sampled at T=0.7, stem at T=0.1, math greedy).
    again = generate_answers(tiny_model, tokenizer, data.questions, "tiny", **kwargs)
    assert [r["choices"] for r in again] == [r["choices"] for r in rows]
    # Turn 2 of a greedy (math) question conditions on the model's own turn-1 answer.
    q, row = next((q, r) for q, r in zip(data.questions, rows, strict=True) if q.category == "math")
    first, second = row["choices"][0]["turns"]
    conversation = [
        {"role": "user", "content": q.turns[0]},
        {"role": "assistant", "content": first},
        {"role": "user", "content": q.turns[1]},
    ]
    with inference_mode(tiny_model):
        replay = chat_generate(tiny_model, tokenizer, [conversation], max_new_tokens=6, temperature=0.0, batch_size=1)
    assert replay == [second]


def test_chat_generate_rejects_prompt_beyond_context(tiny_model, tokenizer) -> None:
    long = [{"role": "user", "content": "word " * 2100}]
    with (
        inference_mode(tiny_model),
        pytest.raises(ValueError, match=r"exceeds the model's context length of 2048"),
    ):
        chat_generate(tiny_model, tokenizer, [long], max_new_tokens=4, temperature=0.0, batch_size=1)


@pytest.mark.parametrize("force_rating", [False, True])
def test_run_mt_bench_end_to_end_tiny_local_judge(tiny_model, tokenizer, tmp_path: Path, force_rating: bool) -> None:
    cfg = EvalConfig(categories=("writing", "math"), max_new_tokens=4, generation_batch_size=3, judge_max_tokens=4)
    judge = LocalJudge(tiny_model, tokenizer, "tiny-judge", max_new_tokens=4, batch_size=4, force_rating=force_rating)
    result = run_mt_bench(tiny_model, tokenizer, cfg, tmp_path, "tiny-policy", judge=judge)

    assert result.answers_path == tmp_path / "model_answer" / "tiny-policy.jsonl"
    assert result.judgments_path == tmp_path / "model_judgment" / "tiny-judge_single.jsonl"
    answers = load_model_answers(result.answers_path)  # our validating FastChat loader
    assert sorted(answers) == [1001, 1002, 1007, 1008]
    records = [json.loads(line) for line in result.judgments_path.read_text().splitlines()]
    assert len(records) == 8 == result.n_valid + result.n_invalid
    refs = load_reference_answers(resolve_source(None, "reference_answers"))
    for rec in records:
        assert set(rec) == JUDGMENT_KEYS and rec["model"] == "tiny-policy"
        math_q = rec["question_id"] in (1007, 1008)
        expected_prompt = {(False, 1): "single-v1", (False, 2): "single-v1-multi-turn"}
        expected_prompt |= {(True, 1): "single-math-v1", (True, 2): "single-math-v1-multi-turn"}
        assert rec["judge"] == ["tiny-judge", expected_prompt[(math_q, rec["turn"])]]
        if math_q:
            assert refs[rec["question_id"]][0] in rec["user_prompt"]
        assert rec["score"] == rating_to_score(parse_rating(rec["judgment"]), True)
    assert result.n_invalid == sum(r["score"] == -1 for r in records)
    if force_rating:  # every judgment carries a rating the parser finds
        assert all(parse_rating(r["judgment"]) != -1 for r in records)
    else:  # a random tiny judge never writes "[[rating]]": invalid judgments, counted and excluded
        assert result.n_invalid > 0
    metrics = result.as_metrics()
    assert set(metrics) == {
        "mt_bench/score",
        "mt_bench/turn_1",
        "mt_bench/turn_2",
        "mt_bench/category/math",
        "mt_bench/category/writing",
        "mt_bench/n_valid",
        "mt_bench/n_invalid",
    }
    assert metrics["mt_bench/n_invalid"] == result.n_invalid
    saved = json.loads((tmp_path / "mt_bench_scores.json").read_text())
    assert saved["model_id"] == "tiny-policy" and saved["metrics"]["mt_bench/n_valid"] == result.n_valid


def test_local_judge_forced_rating_is_the_models_constrained_choice(tiny_model, tokenizer) -> None:
    requests = [
        ("You grade answers.", "Question: what is 2 + 2?\nAnswer: 4"),
        ("S", "short"),
        ("A longer system prompt. " * 5, "Rate this reply: " + "blah " * 30),
    ]
    free = LocalJudge(tiny_model, tokenizer, "t", max_new_tokens=5, batch_size=3, force_rating=False)
    forced = LocalJudge(tiny_model, tokenizer, "t", max_new_tokens=5, batch_size=3)
    free_replies, forced_replies = free.complete_batch(requests), forced.complete_batch(requests)
    digit = {d: tokenizer(str(d), add_special_tokens=False)["input_ids"] for d in range(11)}
    close = tokenizer("]]", add_special_tokens=False)["input_ids"][0]
    checked = 0
    for (system, user), plain, reply in zip(requests, free_replies, forced_replies, strict=True):
        if parse_rating(plain) != -1:
            assert reply == plain
            continue
        match = re.fullmatch(re.escape(plain) + r"\n\nRating: \[\[(\d+)\]\]", reply)
        assert match, reply
        # Independently: one unpadded forward pass, greedy over the digits, then "0" vs "]]" after a "1".
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text + plain + "\n\nRating: [[", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = tiny_model(torch.tensor([ids])).logits[0, -1]
            expected = 1 + int(torch.argmax(logits[[digit[d][0] for d in range(1, 10)]]))
            if expected == 1:
                after_one = tiny_model(torch.tensor([ids + digit[1]])).logits[0, -1]
                expected = 10 if after_one[digit[0][0]] > after_one[close] else 1
        assert int(match.group(1)) == expected
        checked += 1
    assert checked > 0


def test_judge_answers_requires_every_answer_turn() -> None:
    data = load_mt_bench_data(EvalConfig(categories=("writing",), limit=1))
    with pytest.raises(ValueError, match=r"question 1001: expected 2 answer turns, got 1"):
        judge_answers(data, {1001: ["only one"]}, judge=None, model_id="m")  # type: ignore[arg-type]


def test_run_mt_bench_rejects_bad_model_id(tiny_model, tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_id must be"):
        run_mt_bench(tiny_model, tokenizer, EvalConfig(), tmp_path, "../escape")


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--limit", "0"], "limit must be a positive integer"),
        (["--mt-bench-questions", "/nonexistent/question.jsonl"], "questions file not found"),
        (["--judge-base-url", "http://127.0.0.1:1/v1"], "judge_base_url only applies"),
        (["--categories", "poetry"], "categories ['poetry'] have no questions"),
        (
            ["--judge-backend", "openai", "--api-key-env", "DLRML_TEST_UNSET_KEY"],
            "DLRML_TEST_UNSET_KEY is not set",
        ),
        (
            ["--model", "/nonexistent/model_dir"],
            "--model: model directory '/nonexistent/model_dir' does not exist",
        ),
        (
            ["--judge-model", "./no_such_judge"],
            "--judge-model: model directory './no_such_judge' does not exist",
        ),
        (["--max-new-tokens", "lots"], "invalid int value"),
    ],
)
def test_cli_rejects_bad_flags_before_loading(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DLRML_TEST_UNSET_KEY", raising=False)
    base = ["--out", str(tmp_path / "out")] + ([] if "--model" in argv else ["--model", "embedded"])
    with pytest.raises(SystemExit) as exit_info:
        main(base + argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_runs_and_prints_scores(tiny_model_dir: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "evaluation.mt_bench", "--model", str(tiny_model_dir), "--judge-model",
           str(tiny_model_dir), "--out", str(tmp_path), "--categories", "coding", "--limit", "1",
           "--max-new-tokens", "3", "--judge-max-tokens", "3", "--model-id", "tiny"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MT-Bench  model=tiny" in proc.stdout and "average" in proc.stdout and "coding" in proc.stdout
    assert "valid judgments:" in proc.stdout
    assert (tmp_path / "model_answer" / "tiny.jsonl").is_file()
    records = (tmp_path / "model_judgment").glob("*_single.jsonl")
    assert len([line for f in records for line in f.read_text().splitlines()]) == 2
