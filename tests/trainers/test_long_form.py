"""Tests of the bundled long-answer set (``embedded-long``): every chosen answer is correct working, every rejected one
has exactly one verifiable mistake carried through, answers are 50-300 SmolLM2 tokens and survive TRL's tokenisation
at ``max_length=256`` whole. The checks solve each question independently and re-check every line of working."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import Counter

from trainers.data import (
    COLUMNS,
    EMBEDDED_DATA,
    EMBEDDED_LONG_DATA,
    EMBEDDED_LONG_EVAL_SIZE,
    EMBEDDED_LONG_SEED,
    EMBEDDED_LONG_TRAIN_SIZE,
    LONG_TASK_NAMES,
    generate_long_form_pairs,
    load_preference_data,
)
from trainers.data.summary import summarize_data

N_PAIRS = EMBEDDED_LONG_TRAIN_SIZE + EMBEDDED_LONG_EVAL_SIZE
MAX_LENGTH = 256
"""The ``train.max_length`` that keeps every long pair whole with SmolLM2's chat template."""

# How many of the smallest unit each unit holds: the facts a conversion step must use.
_IN_SMALLEST = {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
_IN_SMALLEST |= {"kilometres": 10**6, "metres": 1000, "centimetres": 10, "millimetres": 1}
_IN_SMALLEST |= {"tonnes": 10**9, "kilograms": 10**6, "grams": 1000, "milligrams": 1}
_CHAINED = {"running_sum", "account_balance", "unit_conversion_chain", "date_schedule"}

_ARITHMETIC = re.compile(r"(\d+) ([+\-×]) (\d+) = (\d+)")
_BALANCE = re.compile(r"(Deposit|Withdraw) (\d+): (\d+) ([+-]) (\d+) = (\d+)\.")
_CONVERSION = re.compile(r"(\d+) (\w+) × (\d+) = (\d+) (\w+)\.")
_DATE_STEP = re.compile(r"(\d{4}-\d{2}-\d{2}) \+ (\d+) days = (\d{4}-\d{2}-\d{2})\.")
_LIST_ITEM = re.compile(r"(\d+)\. (\w+)")


def _text(row: dict, column: str) -> str:
    return row[column][0]["content"]


# ------------------------------------------------------------------------------------------ an independent solver


def _solve(task: str, question: str) -> str | list[str]:
    """The correct conclusion (or, for lists and tables, every line) from the question text alone."""
    if task == "running_sum":
        (numbers,) = re.fullmatch(
            r"Add these numbers one at a time, keeping a running total: ([\d, ]+)\.", question
        ).groups()
        return str(sum(map(int, numbers.split(", "))))
    if task == "account_balance":
        start, moves = re.fullmatch(r"An account holds (\d+) dollars\. In order: (.+)\. Give .+", question).groups()
        signed = [
            int(n) if kind == "deposit" else -int(n) for kind, n in re.findall(r"(deposit|withdraw) (\d+)", moves)
        ]
        return str(int(start) + sum(signed))
    if task == "long_multiplication":
        a, b, _ = re.fullmatch(
            r"Multiply (\d+) by (\d+) with long multiplication: .+ of (\d+), then add them\.", question
        ).groups()
        return str(int(a) * int(b))
    if task == "unit_conversion_chain":
        quantity, target = re.fullmatch(r"Convert (.+) to (\w+), one unit at a time\.", question).groups()
        total = sum(int(n) * _IN_SMALLEST[unit] for n, unit in re.findall(r"(\d+) (\w+)", quantity))
        return f"{total // _IN_SMALLEST[target]} {target}"
    if task == "sorted_words":
        (words,) = re.fullmatch(
            r"Put these words in alphabetical order as a numbered list: ([\w, ]+)\.", question
        ).groups()
        return [f"{i}. {word}" for i, word in enumerate(sorted(words.split(", ")), start=1)]
    if task == "multiplication_table":
        base, first, _, last = re.fullmatch(
            r"Write out (\d+) × (\d+) up to (\d+) × (\d+), one line each\.", question
        ).groups()
        return [f"{base} × {k} = {int(base) * k}" for k in range(int(first), int(last) + 1)]
    assert task == "date_schedule", task
    every, start, count = re.fullmatch(
        r"An event repeats every (\d+) days, first on ([\d-]+)\. Give the next (\d+) dates\.", question
    ).groups()
    return (dt.date.fromisoformat(start) + dt.timedelta(days=int(every) * int(count))).isoformat()


def _conclusion_value(task: str, line: str) -> str:
    if task == "unit_conversion_chain":
        return re.fullmatch(r"The answer is (\d+ \w+)\.", line).group(1)
    if task == "date_schedule":
        return re.fullmatch(r"The last of them is ([\d-]+)\.", line).group(1)
    return re.search(r"(\d+)(?: dollars)?\.$", line).group(1)


def _line_is_wrong(line: str) -> bool:
    """Whether one step of working states something false: arithmetic, a sign, a unit factor or a date."""
    for a, op, b, result in _ARITHMETIC.findall(line):
        exact = {"+": int(a) + int(b), "-": int(a) - int(b), "×": int(a) * int(b)}[op]
        if exact != int(result):
            return True
    balance = _BALANCE.fullmatch(line)
    if balance and balance.group(4) != ("+" if balance.group(1) == "Deposit" else "-"):
        return True
    if conversion := _CONVERSION.fullmatch(line):
        _, unit, factor, _, next_unit = conversion.groups()
        if int(factor) * _IN_SMALLEST[next_unit] != _IN_SMALLEST[unit]:
            return True
    if step := _DATE_STEP.fullmatch(line):
        start, days, end = step.groups()
        if dt.date.fromisoformat(start) + dt.timedelta(days=int(days)) != dt.date.fromisoformat(end):
            return True
    return False


def _mistakes(task: str, steps: list[str]) -> int:
    """Verifiably wrong steps: false lines, or for a list, neighbours out of alphabetical order."""
    if task == "sorted_words":
        items = [_LIST_ITEM.fullmatch(line).groups() for line in steps]
        assert [int(number) for number, _ in items] == list(range(1, len(items) + 1))
        return sum(a > b for (_, a), (_, b) in zip(items, items[1:], strict=False))
    return sum(_line_is_wrong(line) for line in steps)


def _carried(steps: list[str]) -> bool:
    """Whether every step starts from the previous step's result (the working is one chain)."""
    results = [re.search(r"= ([\d-]+)", line).group(1) for line in steps]
    starts = [re.search(r"(?::\s)?([\d-]+)(?: \w+)? [+\-×] ", line).group(1) for line in steps]
    return all(start == result for start, result in zip(starts[1:], results, strict=False))


def _split(task: str, answer: str) -> tuple[list[str], str | None]:
    """Steps of working and the conclusion line (``None`` for lists and tables, which are all steps)."""
    lines = answer.split("\n")
    if task in {"sorted_words", "multiplication_table"}:
        return lines, None
    assert lines[-1].startswith(("The ", "So ")), lines[-1]
    return lines[:-1], lines[-1]


# ---------------------------------------------------------------------------------------------------- the set


def test_chosen_working_is_correct_and_rejected_has_one_mistake_carried_through():
    rows = generate_long_form_pairs(N_PAIRS, EMBEDDED_LONG_SEED)
    assert Counter(row["task"] for row in rows).keys() == set(LONG_TASK_NAMES)
    for row in rows:
        task, question = row["task"], _text(row, "prompt")
        chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
        expected = _solve(task, question)
        chosen_steps, chosen_end = _split(task, chosen)
        rejected_steps, rejected_end = _split(task, rejected)
        assert _mistakes(task, chosen_steps) == 0, chosen
        assert _mistakes(task, rejected_steps) == 1, rejected
        assert len(chosen_steps) == len(rejected_steps)
        if chosen_end is None:
            assert chosen_steps == expected and rejected_steps != expected
        else:
            assert _conclusion_value(task, chosen_end) == expected, (question, chosen)
            assert _conclusion_value(task, rejected_end) != expected, (question, rejected)
        if task in _CHAINED:
            assert _carried(chosen_steps) and _carried(rejected_steps), rejected


def test_embedded_long_split_is_fixed_and_held_out_questions_are_new():
    data = load_preference_data(EMBEDDED_LONG_DATA)
    assert (len(data.train), len(data.eval)) == (EMBEDDED_LONG_TRAIN_SIZE, EMBEDDED_LONG_EVAL_SIZE)
    assert tuple(data.train.column_names) == COLUMNS and data.is_conversational
    train_questions = {row["prompt"][0]["content"] for row in data.train}
    eval_questions = {row["prompt"][0]["content"] for row in data.eval}
    assert len(train_questions) == EMBEDDED_LONG_TRAIN_SIZE and len(eval_questions) == EMBEDDED_LONG_EVAL_SIZE
    assert not train_questions & eval_questions
    generated = generate_long_form_pairs(N_PAIRS, EMBEDDED_LONG_SEED)
    assert {row["task"] for row in generated[EMBEDDED_LONG_TRAIN_SIZE:]} == set(LONG_TASK_NAMES)
    assert data.eval.to_list() == [
        {name: row[name] for name in COLUMNS} for row in generated[EMBEDDED_LONG_TRAIN_SIZE:]
    ]
    assert load_preference_data(EMBEDDED_LONG_DATA, seed=7).fingerprint() == data.fingerprint()
    assert load_preference_data(EMBEDDED_DATA).fingerprint() != data.fingerprint()
    small = load_preference_data(EMBEDDED_LONG_DATA, max_train_rows=40, max_eval_rows=8, seed=1)
    assert (len(small.train), len(small.eval)) == (40, 8)
    assert (
        small.fingerprint()
        == load_preference_data(EMBEDDED_LONG_DATA, max_train_rows=40, max_eval_rows=8, seed=1).fingerprint()
    )


def test_answers_are_long_and_fit_max_length_256_whole(tokenizer):
    rows = generate_long_form_pairs(N_PAIRS, EMBEDDED_LONG_SEED)
    lengths = [len(tokenizer(_text(row, side))["input_ids"]) for row in rows for side in ("chosen", "rejected")]
    assert min(lengths) >= 50 and max(lengths) <= 300
    assert math.fsum(lengths) / len(lengths) >= 80
    data = load_preference_data(EMBEDDED_LONG_DATA)
    whole = summarize_data(data, tokenizer, MAX_LENGTH)
    for split, size in ((whole.train, EMBEDDED_LONG_TRAIN_SIZE), (whole.eval, EMBEDDED_LONG_EVAL_SIZE)):
        assert (split.pairs, split.dropped_by_length, split.truncated_by_length) == (size, 0, 0)
        assert 200 < split.longest <= MAX_LENGTH
    # The trial default (128 tokens) would cut most of them: the summary says so.
    cut = summarize_data(data, tokenizer, 128)
    assert cut.train.truncated_by_length > EMBEDDED_LONG_TRAIN_SIZE // 2 and cut.train.dropped_by_length == 0
