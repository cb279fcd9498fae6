"""The bundled long-answer set: verifiable preference pairs whose answers are worked solutions of 60-191 tokens.

The source name :data:`EMBEDDED_LONG_DATA` loads :data:`EMBEDDED_LONG_TRAIN_SIZE` training and
:data:`EMBEDDED_LONG_EVAL_SIZE` held-out pairs generated with :data:`EMBEDDED_LONG_SEED` by
:func:`generate_long_form_pairs`. DPO-family losses score a pair by its summed log-probabilities, so a 5-token
answer (the short bundled set, :mod:`trainers.data.synthetic`) keeps per-pair margins ``rho`` at a few nats, while the
LRML family's behaviour at large beta needs tens: its literal ``exp(-beta * rho)`` overflows fp32 only below
``rho = -88.7 / beta`` (-17.7 nats at beta 5). Here every answer is step-by-step working, one step per line (running
sums, account balances, long multiplication, chained unit conversions, ordered lists, multiplication tables, date
schedules). The chosen answer is correct; the rejected one is the same working with one verifiable mistake (a carry
slip, a sign error, one group too many or too few, a confused unit factor, two items swapped, a month-length error)
carried consistently through the later steps, so chosen and rejected share a prefix and differ from the mistake on.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Any

from trainers.data.synthetic import generate_task_pairs

EMBEDDED_LONG_DATA = "embedded-long"
"""Source name of the bundled long-answer verifiable preference set."""

EMBEDDED_LONG_SEED = 2718
"""Generator seed of the long-answer set; fixed so that its train/eval split never moves."""

EMBEDDED_LONG_TRAIN_SIZE = 512
"""Number of training pairs in the long-answer set."""

EMBEDDED_LONG_EVAL_SIZE = 128
"""Number of held-out pairs in the long-answer set (questions disjoint from the training questions)."""

Task = Callable[[random.Random], tuple[str, str, str]]

# Unit chains, largest unit first: (unit, factor to the next unit); a conversion spans at least three factors.
_UNIT_CHAINS = (
    (("weeks", 7), ("days", 24), ("hours", 60), ("minutes", 60), ("seconds", 0)),
    (("kilometres", 1000), ("metres", 100), ("centimetres", 10), ("millimetres", 0)),
    (("tonnes", 1000), ("kilograms", 1000), ("grams", 1000), ("milligrams", 0)),
)
_MIN_CONVERSIONS = 3
# The factor a hurried solver confuses with each true one (hours for minutes, metric steps off by a power of ten).
_CONFUSED_FACTORS = {7: (5, 10), 24: (12, 60), 60: (24, 100), 1000: (100, 10000), 100: (10, 1000), 10: (100,)}
_WORDS = (
    "anchor", "apple", "apricot", "badger", "balloon", "bamboo", "banana", "basket", "beacon", "biscuit",
    "blanket", "bridge", "butter", "cabbage", "camera", "candle", "canyon", "carpet", "castle", "cherry",
    "circle", "clover", "cobalt", "copper", "cotton", "desert", "dolphin", "dragon", "eagle", "ember",
    "engine", "falcon", "feather", "forest", "fossil", "garden", "garlic", "ginger", "glacier", "granite",
    "harbor", "hazel", "helmet", "island", "jacket", "jasmine", "kettle", "lantern", "lemon", "lizard",
    "magnet", "maple", "marble", "meadow", "mirror", "monkey", "mustard", "needle", "nutmeg", "olive",
    "orange", "orchid", "otter", "paddle", "pebble", "pepper", "pillow", "planet", "pocket", "pumpkin",
    "quartz", "rabbit", "radish", "ribbon", "river", "rocket", "saddle", "salmon", "silver", "spider",
    "spruce", "squirrel", "thistle", "thunder", "timber", "tomato", "tunnel", "turtle", "velvet", "violet",
    "walnut", "window", "winter", "wizard", "yogurt", "zebra",
)  # fmt: skip


def _lines(steps: list[str], conclusion: str | None = None) -> str:
    """One step per line, then the conclusion."""
    return "\n".join([*steps, conclusion] if conclusion else steps)


def _running_sum(rng: random.Random) -> tuple[str, str, str]:
    terms = [rng.randint(1000, 9999) for _ in range(rng.randint(4, 7))]
    slip_at = rng.randrange(1, len(terms))
    slip = rng.choice((-100, -10, 10, 100))  # a dropped or doubled carry in one column

    def working(slip_step: int | None) -> str:
        total, steps = terms[0], []
        for step, term in enumerate(terms[1:], start=1):
            new = total + term + (slip if step == slip_step else 0)
            steps.append(f"{total} + {term} = {new}.")
            total = new
        return _lines(steps, f"The total is {total}.")

    question = f"Add these numbers one at a time, keeping a running total: {', '.join(map(str, terms))}."
    return question, working(None), working(slip_at)


def _account_balance(rng: random.Random) -> tuple[str, str, str]:
    moves = [(rng.choice(("Deposit", "Withdraw")), rng.randint(20, 750)) for _ in range(rng.randint(4, 6))]
    sign_error_at = rng.randrange(len(moves))
    moves[sign_error_at] = ("Withdraw", moves[sign_error_at][1])  # the wrong sign is a withdrawal added
    start = rng.randint(300, 2500) + sum(amount for kind, amount in moves if kind == "Withdraw")

    def working(error_step: int | None) -> str:
        balance, steps = start, []
        for step, (kind, amount) in enumerate(moves):
            adds = kind == "Deposit" or step == error_step
            new = balance + amount if adds else balance - amount
            steps.append(f"{kind} {amount}: {balance} {'+' if adds else '-'} {amount} = {new}.")
            balance = new
        return _lines(steps, f"The final balance is {balance} dollars.")

    listed = ", ".join(f"{kind.lower()} {amount}" for kind, amount in moves)
    question = f"An account holds {start} dollars. In order: {listed}. Give the balance after each transaction."
    return question, working(None), working(sign_error_at)


def _long_multiplication(rng: random.Random) -> tuple[str, str, str]:
    a = rng.randint(102, 987)
    digits = [rng.randint(1, 9) for _ in range(3)]  # units, tens, hundreds of the multiplier; no zero partials
    b = digits[0] + 10 * digits[1] + 100 * digits[2]
    slip_place = rng.randrange(3)
    slip = 1 if digits[slip_place] == 1 else rng.choice((-1, 1))  # one group too many or too few

    def working(slip_at: int | None) -> str:
        steps, partials = [], []
        for place, digit in enumerate(digits):
            scale = 10**place
            partials.append(a * (digit + (slip if place == slip_at else 0)) * scale)
            steps.append(f"{a} × {digit * scale} = {partials[-1]}.")
        total = partials[0]
        for partial in partials[1:]:
            steps.append(f"{total} + {partial} = {total + partial}.")
            total += partial
        return _lines(steps, f"So {a} × {b} = {total}.")

    question = f"Multiply {a} by {b} with long multiplication: one partial product per digit of {b}, then add them."
    return question, working(None), working(slip_place)


def _unit_conversion_chain(rng: random.Random) -> tuple[str, str, str]:
    chain = rng.choice(_UNIT_CHAINS)
    first = rng.randrange(len(chain) - _MIN_CONVERSIONS)
    last = rng.randrange(first + _MIN_CONVERSIONS, len(chain))
    amounts = [rng.randint(2, 9)] + [rng.randint(1, chain[k - 1][1] - 1) for k in range(first + 1, last)]
    slip_at = rng.randrange(first, last)
    wrong_factor = rng.choice(_CONFUSED_FACTORS[chain[slip_at][1]])

    def working(slip_step: int | None) -> str:
        value, steps = amounts[0], []
        for k in range(first, last):
            unit, factor = chain[k]
            next_unit = chain[k + 1][0]
            converted = value * (wrong_factor if k == slip_step else factor)
            steps.append(f"{value} {unit} × {wrong_factor if k == slip_step else factor} = {converted} {next_unit}.")
            value = converted
            if k + 1 < last:
                added = amounts[k + 1 - first]
                steps.append(f"{value} {next_unit} + {added} {next_unit} = {value + added} {next_unit}.")
                value += added
        return _lines(steps, f"The answer is {value} {chain[last][0]}.")

    parts = [f"{amount} {chain[first + i][0]}" for i, amount in enumerate(amounts)]
    quantity = f"{', '.join(parts[:-1])} and {parts[-1]}"
    question = f"Convert {quantity} to {chain[last][0]}, one unit at a time."
    return question, working(None), working(slip_at)


def _sorted_words(rng: random.Random) -> tuple[str, str, str]:
    words = rng.sample(_WORDS, rng.randint(14, 18))
    ordered = sorted(words)
    swap = rng.randrange(len(ordered) - 1)  # two neighbours out of order
    mis_sorted = list(ordered)
    mis_sorted[swap], mis_sorted[swap + 1] = mis_sorted[swap + 1], mis_sorted[swap]

    def numbered(items: list[str]) -> str:
        return _lines([f"{position}. {word}" for position, word in enumerate(items, start=1)])

    question = f"Put these words in alphabetical order as a numbered list: {', '.join(words)}."
    return question, numbered(ordered), numbered(mis_sorted)


def _multiplication_table(rng: random.Random) -> tuple[str, str, str]:
    base = rng.randint(12, 99)
    first = rng.randint(2, 9)
    count = rng.randint(9, 12)
    slip_at = rng.randrange(count)
    slip = rng.choice((-10, 10, -base, base))  # a carry slip, or one group too many or too few

    def table(slip_row: int | None) -> str:
        products = [base * (first + row) + (slip if row == slip_row else 0) for row in range(count)]
        return _lines([f"{base} × {first + row} = {product}" for row, product in enumerate(products)])

    question = f"Write out {base} × {first} up to {base} × {first + count - 1}, one line each."
    return question, table(None), table(slip_at)


def _date_schedule(rng: random.Random) -> tuple[str, str, str]:
    start = dt.date(2023, 1, 1) + dt.timedelta(days=rng.randrange(3 * 365))
    every = rng.randint(6, 16)
    count = rng.randint(max(5, -(-32 // every)), 6)  # spans at least 32 days, so some step crosses a month end
    correct = [start + dt.timedelta(days=every * k) for k in range(count + 1)]
    month_end = next(k for k in range(1, count + 1) if correct[k].month != correct[k - 1].month)
    slip = dt.timedelta(days=rng.choice((-1, 1)))  # the month taken as a day shorter or longer than it is

    def working(slip_step: int | None) -> str:
        date, steps = start, []
        for step in range(1, count + 1):
            new = date + dt.timedelta(days=every) + (slip if step == slip_step else dt.timedelta(0))
            steps.append(f"{date.isoformat()} + {every} days = {new.isoformat()}.")
            date = new
        return _lines(steps, f"The last of them is {date.isoformat()}.")

    question = f"An event repeats every {every} days, first on {start.isoformat()}. Give the next {count} dates."
    return question, working(None), working(month_end)


_LONG_TASKS: tuple[tuple[str, Task], ...] = (
    ("running_sum", _running_sum),
    ("account_balance", _account_balance),
    ("long_multiplication", _long_multiplication),
    ("unit_conversion_chain", _unit_conversion_chain),
    ("sorted_words", _sorted_words),
    ("multiplication_table", _multiplication_table),
    ("date_schedule", _date_schedule),
)
LONG_TASK_NAMES = tuple(name for name, _ in _LONG_TASKS)
"""Task families of :func:`generate_long_form_pairs`, in round-robin order."""


def generate_long_form_pairs(n: int, seed: int) -> list[dict[str, Any]]:
    """Generate pairs of worked answers: the chosen one correct, the rejected one with one verifiable mistake.

    Tasks cycle round-robin through :data:`LONG_TASK_NAMES`; every question is unique within one call, the output
    is a pure function of ``(n, seed)`` and its first ``m <= n`` rows do not depend on ``n``
    (:func:`~trainers.data.synthetic.generate_task_pairs`).

    Args:
        n: Number of pairs, at least 1.
        seed: Seed of the generator.

    Returns:
        ``n`` conversational rows ``{"prompt": [user message], "chosen": [assistant message],
        "rejected": [assistant message], "task": task name}``; answers are 60-191 SmolLM2 tokens long.

    Raises:
        ValueError: ``n`` is not a positive integer, or a task ran out of distinct questions.
    """
    return generate_task_pairs(_LONG_TASKS, n, seed)
