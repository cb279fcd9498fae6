"""The bundled data: verifiable preference pairs generated on the fly (:func:`generate_verifiable_pairs`).

The source name :data:`EMBEDDED_DATA` loads :data:`EMBEDDED_TRAIN_SIZE` training and :data:`EMBEDDED_EVAL_SIZE`
held-out pairs generated with :data:`EMBEDDED_SEED`: arithmetic, unit conversion, sorting, letter counting,
decimal comparison, weekday and date arithmetic. The chosen answer is correct, the rejected one a plausible
mistake (off-by-one, wrong unit factor, one adjacent swap, ...). Every question is unique, so train and
held-out rows ask different questions and held-out preference accuracy measures generalisation, not recall.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Sequence
from typing import Any

EMBEDDED_DATA = "embedded"
"""Source name of the bundled verifiable preference set."""

EMBEDDED_SEED = 1729
"""Generator seed of the bundled set; fixed so that its train/eval split never moves."""

EMBEDDED_TRAIN_SIZE = 512
"""Number of training pairs in the bundled set."""

EMBEDDED_EVAL_SIZE = 128
"""Number of held-out pairs in the bundled set (questions disjoint from the training questions)."""

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_UNIT_FACTORS = (
    ("km", "m", 1000),
    ("m", "cm", 100),
    ("cm", "mm", 10),
    ("kg", "g", 1000),
    ("L", "mL", 1000),
    ("h", "min", 60),
    ("min", "s", 60),
    ("days", "h", 24),
)
_CONFUSED_FACTORS = (10, 24, 60, 100, 1000)
_WORDS = (
    "strawberry", "banana", "mississippi", "letter", "bookkeeper", "committee", "balloon", "coffee",
    "address", "necessary", "occurrence", "parallel", "pepper", "sassafras", "tomorrow", "yellow",
    "assessment", "accommodate", "millennium", "possession", "embarrass", "cinnamon", "giraffe", "kiwi",
    "referee", "success", "vacuum", "zucchini", "puzzle", "raspberry", "blueberry", "engineer",
    "grammar", "harassment", "independent", "kangaroo", "llama", "mammal", "noodle", "pineapple",
    "questionnaire", "recommend", "scissors", "tattoo", "umbrella", "volleyball", "waterfall", "excellent",
    "apple", "programming", "statistics", "algorithm", "preference", "optimization", "entropy", "gradient",
    "calendar", "beekeeper", "assassin", "bubble", "cheese", "dessert", "effervescent", "furniture",
)  # fmt: skip


def _arith_add(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    answer = a + b
    wrong = answer + rng.choice((-10, -1, 1, 10))  # off-by-one or a dropped/extra carry
    return f"What is {a} + {b}?", str(answer), str(wrong)


def _arith_subtract(rng: random.Random) -> tuple[str, str, str]:
    a = rng.randint(20, 99)
    b = rng.randint(10, a - 1)
    answer = a - b
    wrong = answer + rng.choice((-10, -1, 1, 10))  # off-by-one or a borrow error
    return f"What is {a} - {b}?", str(answer), str(wrong)


def _arith_multiply(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(3, 19), rng.randint(3, 12)
    wrong = a * (b + rng.choice((-1, 1)))  # one group too many or too few
    return f"What is {a} × {b}?", str(a * b), str(wrong)


def _unit_conversion(rng: random.Random) -> tuple[str, str, str]:
    source_unit, target_unit, factor = rng.choice(_UNIT_FACTORS)
    quantity = rng.randint(2, 95)
    wrong_factor = rng.choice([f for f in _CONFUSED_FACTORS if f != factor])
    question = f"Convert {quantity} {source_unit} to {target_unit}."
    return question, f"{quantity * factor} {target_unit}", f"{quantity * wrong_factor} {target_unit}"


def _sort_numbers(rng: random.Random) -> tuple[str, str, str]:
    descending = rng.random() < 0.5
    numbers = rng.sample(range(1, 100), rng.randint(4, 6))
    ordered = sorted(numbers, reverse=descending)
    while numbers == ordered:  # an already sorted question would test nothing
        rng.shuffle(numbers)
    swap = rng.randrange(len(ordered) - 1)
    mis_sorted = list(ordered)
    mis_sorted[swap], mis_sorted[swap + 1] = mis_sorted[swap + 1], mis_sorted[swap]
    order = "descending" if descending else "ascending"
    question = f"Sort these numbers in {order} order: {', '.join(map(str, numbers))}"
    return question, ", ".join(map(str, ordered)), ", ".join(map(str, mis_sorted))


def _count_letter(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(_WORDS)
    letter = rng.choice(sorted(set(word)))
    answer = word.count(letter)
    wrong = answer + rng.choice((-1, 1))  # the classic miscount
    return f'How many times does the letter "{letter}" appear in "{word}"?', str(answer), str(wrong)


def _compare_decimals(rng: random.Random) -> tuple[str, str, str]:
    # a.b versus a.cd with cd > b as integers but a.cd < a.b: the "9.11 > 9.9" confusion.
    whole = rng.randint(0, 20)
    tenths = rng.randint(2, 9)
    hundredths = rng.randint(10, 10 * tenths - 1)
    if hundredths % 10 == 0:  # "x.30" would read as "x.3"
        hundredths += 1
    larger, smaller = f"{whole}.{tenths}", f"{whole}.{hundredths:02d}"
    first, second = (larger, smaller) if rng.random() < 0.5 else (smaller, larger)
    return f"Which is larger: {first} or {second}?", larger, smaller


def _weekday_shift(rng: random.Random) -> tuple[str, str, str]:
    start = rng.randrange(7)
    days = rng.randint(2, 60)
    answer = _WEEKDAYS[(start + days) % 7]
    wrong = _WEEKDAYS[(start + days + rng.choice((-1, 1))) % 7]  # fencepost error
    question = f"If today is {_WEEKDAYS[start]}, what day of the week will it be in {days} days?"
    return question, answer, wrong


def _date_add(rng: random.Random) -> tuple[str, str, str]:
    start = dt.date(2023, 1, 1) + dt.timedelta(days=rng.randrange(3 * 365))
    days = rng.randint(3, 45)
    answer = start + dt.timedelta(days=days)
    wrong = answer + dt.timedelta(days=rng.choice((-1, 1)))  # fencepost / month-length error
    return f"What date is {days} days after {start.isoformat()}?", answer.isoformat(), wrong.isoformat()


_TASKS: tuple[tuple[str, Callable[[random.Random], tuple[str, str, str]]], ...] = (
    ("add", _arith_add),
    ("subtract", _arith_subtract),
    ("multiply", _arith_multiply),
    ("unit_conversion", _unit_conversion),
    ("sort", _sort_numbers),
    ("count_letter", _count_letter),
    ("compare_decimals", _compare_decimals),
    ("weekday_shift", _weekday_shift),
    ("date_add", _date_add),
)
TASK_NAMES = tuple(name for name, _ in _TASKS)
"""Task families of :func:`generate_verifiable_pairs`, in round-robin order."""


def generate_verifiable_pairs(n: int, seed: int) -> list[dict[str, Any]]:
    """Generate preference pairs whose chosen answer is verifiably correct and rejected one plausibly wrong.

    Tasks cycle round-robin through :data:`TASK_NAMES` (:func:`generate_task_pairs`); answers are a few tokens long.

    Args:
        n: Number of pairs, at least 1.
        seed: Seed of the generator.

    Returns:
        ``n`` conversational rows, as :func:`generate_task_pairs` returns them.

    Raises:
        ValueError: ``n`` is not a positive integer, or a task ran out of distinct questions.
    """
    return generate_task_pairs(_TASKS, n, seed)


def generate_task_pairs(
    tasks: Sequence[tuple[str, Callable[[random.Random], tuple[str, str, str]]]], n: int, seed: int
) -> list[dict[str, Any]]:
    """Generate ``n`` pairs from task families, round-robin, each question unique.

    Every question is unique within one call, so any two disjoint slices of the result ask different questions.
    The output is a pure function of ``(tasks, n, seed)`` and the first ``m <= n`` rows do not depend on ``n``.

    Args:
        tasks: ``(name, make)`` pairs; ``make(rng)`` returns ``(question, correct answer, wrong answer)``.
        n: Number of pairs, at least 1.
        seed: Seed of the generator.

    Returns:
        ``n`` conversational rows ``{"prompt": [user message], "chosen": [assistant message],
        "rejected": [assistant message], "task": task name}``.

    Raises:
        ValueError: ``n`` is not a positive integer, or a task ran out of distinct questions.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    while len(rows) < n:
        task, make = tasks[len(rows) % len(tasks)]
        for _ in range(1000):
            question, answer, wrong = make(rng)
            if question not in seen:
                break
        else:
            raise ValueError(f"task {task!r} has no new question left after {len(rows)} pairs; lower n")
        seen.add(question)
        rows.append(
            {
                "prompt": [{"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": answer}],
                "rejected": [{"role": "assistant", "content": wrong}],
                "task": task,
            }
        )
    return rows
