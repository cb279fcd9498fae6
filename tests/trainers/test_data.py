"""Tests of trainers.data: the verifiable bundled set, every file format, the real HH-RLHF sample,
validation errors and drop counts, fingerprints, and TRL's acceptance of the loaded rows."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from collections import Counter
from decimal import Decimal
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from trl.data_utils import (
    apply_chat_template,
    is_conversational,
    maybe_apply_chat_template,
    maybe_extract_prompt,
)

from trainers.data import (
    COLUMNS,
    EMBEDDED_DATA,
    EMBEDDED_EVAL_SIZE,
    EMBEDDED_SEED,
    EMBEDDED_TRAIN_SIZE,
    LONG_TASK_NAMES,
    TASK_NAMES,
    PreferenceData,
    PreferenceDataError,
    generate_long_form_pairs,
    generate_verifiable_pairs,
    load_preference_data,
)

HH_FILE = Path("data") / "hh_rlhf_harmless_test_300.jsonl"

# ------------------------------------------------------------------ an independent solver for the bundled set

_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_FACTORS = {("km", "m"): 1000, ("m", "cm"): 100, ("cm", "mm"): 10, ("kg", "g"): 1000, ("L", "mL"): 1000}
_FACTORS |= {("h", "min"): 60, ("min", "s"): 60, ("days", "h"): 24}


def _solve(question: str) -> str:
    """Recompute the correct answer from the question text alone."""
    solvers = [
        (r"What is (\d+) \+ (\d+)\?", lambda a, b: str(int(a) + int(b))),
        (r"What is (\d+) - (\d+)\?", lambda a, b: str(int(a) - int(b))),
        (r"What is (\d+) × (\d+)\?", lambda a, b: str(int(a) * int(b))),
        (r"Convert (\d+) (\w+) to (\w+)\.", lambda q, src, dst: f"{int(q) * _FACTORS[src, dst]} {dst}"),
        (
            r"Sort these numbers in (ascending|descending) order: ([\d, ]+)",
            lambda order, numbers: ", ".join(
                map(str, sorted(map(int, numbers.split(", ")), reverse=order == "descending"))
            ),
        ),
        (r'How many times does the letter "(\w)" appear in "(\w+)"\?', lambda ch, word: str(word.count(ch))),
        (r"Which is larger: ([\d.]+) or ([\d.]+)\?", lambda a, b: max(a, b, key=Decimal)),
        (
            r"If today is (\w+), what day of the week will it be in (\d+) days\?",
            lambda day, n: _WEEKDAYS[(_WEEKDAYS.index(day) + int(n)) % 7],
        ),
        (
            r"What date is (\d+) days after (\d{4}-\d{2}-\d{2})\?",
            lambda n, start: (dt.date.fromisoformat(start) + dt.timedelta(days=int(n))).isoformat(),
        ),
    ]
    answers = [solve(*m.groups()) for pattern, solve in solvers if (m := re.fullmatch(pattern, question))]
    assert len(answers) == 1, f"no unique solver for {question!r}"
    return answers[0]


def _question(row: dict) -> str:
    return row["prompt"][-1]["content"]


# --------------------------------------------------------------------------------------- bundled set


@pytest.mark.parametrize(
    ("generate", "task_names"),
    [(generate_verifiable_pairs, TASK_NAMES), (generate_long_form_pairs, LONG_TASK_NAMES)],
    ids=["embedded", "embedded-long"],
)
def test_generator_is_deterministic_and_prefix_stable(generate, task_names):
    first = generate(30, seed=3)
    assert first == generate(30, seed=3)
    assert generate(12, seed=3) == first[:12]
    assert first != generate(30, seed=4)
    assert [row["task"] for row in first[: len(task_names)]] == list(task_names)
    with pytest.raises(ValueError, match="positive integer"):
        generate(0, seed=3)


def test_every_embedded_pair_is_verifiably_correct_and_rejected_is_wrong():
    rows = generate_verifiable_pairs(EMBEDDED_TRAIN_SIZE + EMBEDDED_EVAL_SIZE, EMBEDDED_SEED)
    for row in rows:
        question = _question(row)
        answer = _solve(question)
        assert row["chosen"] == [{"role": "assistant", "content": answer}], question
        assert row["rejected"][0]["role"] == "assistant"
        assert row["rejected"][0]["content"] != answer, question
        assert len(row["chosen"][0]["content"]) <= 40 and len(row["rejected"][0]["content"]) <= 40
    assert Counter(row["task"] for row in rows).keys() == set(TASK_NAMES)


def test_embedded_split_is_fixed_and_held_out_questions_are_new():
    data = load_preference_data(EMBEDDED_DATA)
    assert (len(data.train), len(data.eval)) == (EMBEDDED_TRAIN_SIZE, EMBEDDED_EVAL_SIZE)
    assert tuple(data.train.column_names) == COLUMNS and data.is_conversational
    assert (data.n_dropped, data.dropped) == (0, {})
    train_questions = {_question(row) for row in data.train}
    eval_questions = {_question(row) for row in data.eval}
    assert len(train_questions) == EMBEDDED_TRAIN_SIZE and len(eval_questions) == EMBEDDED_EVAL_SIZE
    assert not train_questions & eval_questions
    generated = generate_verifiable_pairs(EMBEDDED_TRAIN_SIZE + EMBEDDED_EVAL_SIZE, EMBEDDED_SEED)
    expected_eval = [{name: row[name] for name in COLUMNS} for row in generated[EMBEDDED_TRAIN_SIZE:]]
    assert data.eval.to_list() == expected_eval
    eval_tasks = {row["task"] for row in generated[EMBEDDED_TRAIN_SIZE:]}
    assert eval_tasks == set(TASK_NAMES)
    # The embedded split does not depend on the seed; the fingerprint is stable across loads.
    again = load_preference_data(EMBEDDED_DATA, seed=7)
    assert again.fingerprint() == data.fingerprint()


def test_max_rows_take_a_seeded_subset():
    full = load_preference_data(EMBEDDED_DATA)
    small = load_preference_data(EMBEDDED_DATA, max_train_rows=64, max_eval_rows=16, seed=1)
    assert (len(small.train), len(small.eval)) == (64, 16)
    full_train = full.train.to_list()
    assert all(row in full_train for row in small.train.to_list())
    same = load_preference_data(EMBEDDED_DATA, max_train_rows=64, max_eval_rows=16, seed=1)
    other = load_preference_data(EMBEDDED_DATA, max_train_rows=64, max_eval_rows=16, seed=2)
    assert same.fingerprint() == small.fingerprint() != other.fingerprint()


# ------------------------------------------------------------------------------------------ file formats


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _explicit_string_rows(n: int) -> list[dict]:
    return [{"prompt": f"Q{i}: 2 + {i} =", "chosen": f" {2 + i}", "rejected": f" {3 + i}"} for i in range(n)]


def _message_rows(n: int) -> list[dict]:
    return [
        {
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Capital #{i}?"},
            ],
            "chosen": [{"role": "assistant", "content": f"City {i}", "name": "bot"}],
            "rejected": [{"role": "assistant", "content": f"Town {i}"}],
            "source": "unit-test",
        }
        for i in range(n)
    ]


def test_explicit_jsonl_with_strings(tmp_path: Path):
    rows = _explicit_string_rows(20)
    path = _write_jsonl(tmp_path / "prefs.jsonl", rows)
    data = load_preference_data(str(path), eval_fraction=0.25, seed=5)
    assert not data.is_conversational
    assert (len(data.train), len(data.eval)) == (15, 5)
    assert sorted(data.train.to_list() + data.eval.to_list(), key=lambda r: r["prompt"]) == sorted(
        rows, key=lambda r: r["prompt"]
    )
    assert not {row["prompt"] for row in data.train} & {row["prompt"] for row in data.eval}
    assert load_preference_data(str(path), eval_fraction=0.25, seed=6).eval["prompt"] != data.eval["prompt"]


def test_explicit_jsonl_with_messages_keeps_role_and_content_only(tmp_path: Path):
    path = _write_jsonl(tmp_path / "prefs.jsonl", _message_rows(10))
    data = load_preference_data(str(path), eval_fraction=0.2)
    assert data.is_conversational and tuple(data.train.column_names) == COLUMNS
    row = next(r for r in data.train.to_list() + data.eval.to_list() if r["prompt"][1]["content"] == "Capital #3?")
    assert row == {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital #3?"}],
        "chosen": [{"role": "assistant", "content": "City 3"}],
        "rejected": [{"role": "assistant", "content": "Town 3"}],
    }


def test_parquet_and_json_array_files(tmp_path: Path):
    rows = _message_rows(8)
    parquet = tmp_path / "prefs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    json_array = tmp_path / "prefs.json"
    json_array.write_text(json.dumps(rows), encoding="utf-8")
    from_parquet = load_preference_data(str(parquet), eval_fraction=0.25)
    from_json = load_preference_data(str(json_array), eval_fraction=0.25)
    from_jsonl = load_preference_data(str(_write_jsonl(tmp_path / "prefs.jsonl", rows)), eval_fraction=0.25)
    assert (len(from_parquet.train), len(from_parquet.eval)) == (6, 2)
    assert from_parquet.fingerprint() == from_json.fingerprint() == from_jsonl.fingerprint()


def test_implicit_message_lists_in_a_dataset_folder_use_its_test_split(tmp_path: Path, monkeypatch):
    """The hub code path (datasets.load_dataset) on a local folder shaped like argilla/dpo-mix-7k."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))

    def dpo_mix_row(i: int) -> dict:
        user = {"role": "user", "content": f"Name a prime above {i}."}
        return {
            "dataset": "unit-test",
            "chosen": [user, {"role": "assistant", "content": "A prime."}],
            "rejected": [user, {"role": "assistant", "content": f"{2 * i + 4}"}],
            "chosen_rating": 5.0,
            "rejected_rating": 1.0,
        }

    folder = tmp_path / "dpo_mix_like"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([dpo_mix_row(i) for i in range(12)]), folder / "data" / "train.parquet")
    pq.write_table(pa.Table.from_pylist([dpo_mix_row(i) for i in range(50, 53)]), folder / "data" / "test.parquet")

    data = load_preference_data(str(folder))
    assert (len(data.train), len(data.eval)) == (12, 3)
    assert data.eval[0] == {
        "prompt": [{"role": "user", "content": "Name a prime above 50."}],
        "chosen": [{"role": "assistant", "content": "A prime."}],
        "rejected": [{"role": "assistant", "content": "104"}],
    }
    sliced = load_preference_data(str(folder), split="train[:5]")
    assert len(sliced.train) == 5


def test_string_prompt_column_next_to_implicit_messages_is_extracted_like_trl(tmp_path: Path):
    user = {"role": "user", "content": "What color is the sky?"}
    rows = [
        {
            "prompt": f"What color is the sky? ({i})",
            "chosen": [
                {**user, "content": f"{user['content']} ({i})"},
                {"role": "assistant", "content": "Blue."},
            ],
            "rejected": [
                {**user, "content": f"{user['content']} ({i})"},
                {"role": "assistant", "content": "Green."},
            ],
        }
        for i in range(4)
    ]
    data = load_preference_data(str(_write_jsonl(tmp_path / "uf.jsonl", rows)), eval_fraction=0.25)
    expected = maybe_extract_prompt(rows[0])
    loaded = {row["prompt"][0]["content"]: row for row in data.train.to_list() + data.eval.to_list()}
    assert loaded["What color is the sky? (0)"] == {name: expected[name] for name in COLUMNS}


def test_eval_source_and_format_unification(tmp_path: Path):
    path = _write_jsonl(tmp_path / "eval.jsonl", _explicit_string_rows(4))
    data = load_preference_data(EMBEDDED_DATA, eval_source=str(path))
    assert len(data.train) == EMBEDDED_TRAIN_SIZE and len(data.eval) == 4
    # The string pairs became user/assistant messages so that both splits share one format.
    assert data.eval[0] == {
        "prompt": [{"role": "user", "content": "Q0: 2 + 0 ="}],
        "chosen": [{"role": "assistant", "content": " 2"}],
        "rejected": [{"role": "assistant", "content": " 3"}],
    }


# ------------------------------------------------------------------------------------ real HH-RLHF file


def test_real_hh_rlhf_file(shared_dir: Path):
    path = str(shared_dir / HH_FILE)
    # Line 87 of the real file really has an empty final chosen reply ("...\n\nAssistant: ").
    with pytest.raises(PreferenceDataError, match=r"line 87, field 'chosen'.*reply is empty") as err:
        load_preference_data(path)
    assert (err.value.row, err.value.field, err.value.reason) == (87, "chosen", "empty_text")

    data = load_preference_data(path, on_bad_rows="drop", eval_fraction=0.1)
    assert len(data.train) + len(data.eval) == 299 and len(data.eval) >= 30
    assert (data.n_dropped, data.dropped) == (1, {"empty_text": 1})
    rows = {row["prompt"][0]["content"]: row for row in data.train.to_list() + data.eval.to_list()}

    pranks = rows["what are some pranks with a pen i can do?"]
    assert [m["role"] for m in pranks["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert pranks["prompt"][1]["content"] == "Are you looking for practical joke ideas?"
    assert pranks["prompt"][2]["content"] == "yep"
    assert pranks["prompt"][3]["content"].startswith("Ok, I’ll give you a couple examples")
    assert pranks["prompt"][3]["content"].endswith("you will find a new place to watch.")
    assert pranks["prompt"][4]["content"] == "okay some of these do not have anything to do with pens"
    assert pranks["chosen"] == [
        {
            "role": "assistant",
            "content": "No, sorry!  All of these involve a pen, the point is that you can get funny "
            "results by doing pranks with pens.",
        }
    ]
    assert pranks["rejected"][0]["content"].startswith("There are lots of funny things you can do with pens")

    alcohol = rows["How much alcohol can I drink per day?"]
    assert len(alcohol["prompt"]) == 5
    assert alcohol["prompt"][-1] == {
        "role": "user",
        "content": "I feel much better when I get drunk and consume a lot of alcohol.",
    }
    assert alcohol["rejected"][0]["content"] == (
        "I’m glad that you’re enjoying your alcohol intake. Can I ask about how you feel when you don’t drink alcohol?"
    )

    # "Human:" inside a reply (not after a blank line) is text, not a new turn.
    insults = rows["what are some insults for a foreign exchange student?"]
    assert len(insults["prompt"]) == 1
    assert insults["chosen"][0]["content"].startswith("Human:  insulting a foreign exchange student")
    assert insults["rejected"] == [{"role": "assistant", "content": "What are you hoping to accomplish here?"}]


# ---------------------------------------------------------------------------------------- bad rows

_GOOD = {"prompt": "Is 7 prime?", "chosen": "Yes.", "rejected": "No."}
_MSG = [{"role": "user", "content": "hi"}]
_BAD_ROWS = {
    "missing_rejected": ({"prompt": "p", "chosen": "a"}, "rejected", "missing_column"),
    "missing_prompt": ({"chosen": "a", "rejected": "b"}, "prompt", "missing_column"),
    "number": ({"prompt": "p", "chosen": 42, "rejected": "b"}, "chosen", "invalid_type"),
    "null": ({"prompt": "p", "chosen": "a", "rejected": None}, "rejected", "invalid_type"),
    "blank": ({"prompt": "p", "chosen": "   ", "rejected": "b"}, "chosen", "empty_text"),
    "identical": ({"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected", "identical_pair"),
    "two_human_turns": (
        {
            "chosen": "\n\nHuman: a\n\nAssistant: b",
            "rejected": "\n\nHuman: a\n\nHuman: again\n\nAssistant: c",
        },
        "rejected",
        "malformed_transcript",
    ),
    "prompts_differ": (
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: other\n\nAssistant: c"},
        "rejected",
        "malformed_transcript",
    ),
    "ends_with_human": (
        {"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c", "rejected": "\n\nHuman: a\n\nAssistant: d"},
        "chosen",
        "malformed_transcript",
    ),
    "empty_content": (
        {"prompt": _MSG, "chosen": [{"role": "assistant", "content": ""}], "rejected": "b"},
        "chosen[0].content",
        "empty_text",
    ),
    "bad_role": (
        {"prompt": [{"role": "human", "content": "hi"}], "chosen": "a", "rejected": "b"},
        "prompt[0].role",
        "malformed_message",
    ),
    "not_a_message": ({"prompt": _MSG, "chosen": ["a"], "rejected": "b"}, "chosen[0]", "malformed_message"),
    "chosen_repeats_prompt": (
        {"prompt": _MSG, "chosen": [*_MSG, {"role": "assistant", "content": "a"}], "rejected": "b"},
        "chosen[0].role",
        "malformed_message",
    ),
    "not_an_object": ([1, 2], None, "invalid_row"),
}


@pytest.mark.parametrize("case", sorted(_BAD_ROWS))
def test_bad_row_error_names_file_line_and_field(tmp_path: Path, case: str):
    bad, field, reason = _BAD_ROWS[case]
    path = tmp_path / "bad.jsonl"
    # Line 2 is blank: line numbers still count it.
    path.write_text(json.dumps(_GOOD) + "\n\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(PreferenceDataError) as err:
        load_preference_data(str(path))
    assert (err.value.row, err.value.field, err.value.reason) == (3, field, reason)
    message = str(err.value)
    assert str(path) in message and "line 3" in message
    assert field is None or f"field {field!r}" in message


def test_unparsable_json_and_non_utf8_lines(tmp_path: Path):
    path = tmp_path / "broken.jsonl"
    path.write_bytes(json.dumps(_GOOD).encode() + b'\n{"prompt": "p", "chosen": \n')
    with pytest.raises(PreferenceDataError, match=r"broken\.jsonl line 2: unparsable JSON") as err:
        load_preference_data(str(path))
    assert (err.value.row, err.value.field, err.value.reason) == (2, None, "invalid_json")

    latin1 = json.dumps({"prompt": "café?", "chosen": "oui", "rejected": "non"}, ensure_ascii=False).encode("latin-1")
    path.write_bytes(json.dumps(_GOOD).encode() + b"\n" + json.dumps(_GOOD).encode() + b"\n" + latin1 + b"\n")
    with pytest.raises(PreferenceDataError, match=r"line 3: not valid UTF-8") as err:
        load_preference_data(str(path))
    assert err.value.reason == "invalid_utf8"


def test_drop_mode_counts_every_reason(tmp_path: Path):
    good = [{"prompt": f"Is {n} prime?", "chosen": "Yes.", "rejected": "No."} for n in (2, 3, 5, 7)]
    bad = [row for row, _, _ in _BAD_ROWS.values()]
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(row).encode() for row in good[:2] + bad + good[2:]]
    lines += [b"{not json", "\u00e9".encode("latin-1")]
    path.write_bytes(b"\n".join(lines) + b"\n")
    data = load_preference_data(str(path), on_bad_rows="drop", eval_fraction=0.25)
    expected = Counter(reason for _, _, reason in _BAD_ROWS.values())
    expected.update(["invalid_json", "invalid_utf8"])
    assert data.dropped == dict(expected)
    assert data.n_dropped == len(bad) + 2 == sum(data.dropped.values())
    assert len(data.train) + len(data.eval) == len(good)


def test_parquet_bad_row_is_named_by_row(tmp_path: Path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([_GOOD, {**_GOOD, "chosen": None}]), path)
    with pytest.raises(PreferenceDataError, match=r"bad\.parquet row 2, field 'chosen'.*null") as err:
        load_preference_data(str(path))
    assert err.value.reason == "invalid_type"


def test_whole_source_errors(tmp_path: Path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(PreferenceDataError, match=r"empty\.jsonl: the dataset is empty"):
        load_preference_data(str(empty))

    all_bad = _write_jsonl(tmp_path / "all_bad.jsonl", [{"prompt": "p", "chosen": "x", "rejected": "x"}] * 3)
    with pytest.raises(PreferenceDataError, match=r"all 3 rows were dropped.*identical_pair=3"):
        load_preference_data(str(all_bad), on_bad_rows="drop")

    not_utf8 = tmp_path / "latin1.json"
    not_utf8.write_bytes(b'[\n{"prompt": "caf\xe9"}\n]')
    with pytest.raises(PreferenceDataError, match=r"latin1\.json line 2: file is not valid UTF-8"):
        load_preference_data(str(not_utf8))

    broken_array = tmp_path / "broken.json"
    broken_array.write_text('[\n{"prompt": "p",\n', encoding="utf-8")
    with pytest.raises(PreferenceDataError, match=r"broken\.json line \d: unparsable JSON array"):
        load_preference_data(str(broken_array))

    with pytest.raises(PreferenceDataError, match=r"missing\.jsonl does not exist"):
        load_preference_data(str(tmp_path / "missing.jsonl"))

    csv = tmp_path / "prefs.csv"
    csv.write_text("prompt,chosen,rejected\n", encoding="utf-8")
    with pytest.raises(PreferenceDataError, match=r"unsupported preference file type '\.csv'"):
        load_preference_data(str(csv))

    single_prompt = _write_jsonl(tmp_path / "one.jsonl", [_GOOD, {**_GOOD, "chosen": "Yes, it is."}])
    with pytest.raises(PreferenceDataError, match="1 distinct prompt"):
        load_preference_data(str(single_prompt))


def test_unknown_source_offline_says_what_was_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PreferenceDataError) as err:
        load_preference_data("no-such-org/no-such-preference-set")
    message = str(err.value)
    assert "'no-such-org/no-such-preference-set'" in message and "'embedded'" in message
    assert "does not exist" in message and "HF_HUB_OFFLINE=1" in message and "load_dataset" in message


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eval_fraction": 0.0}, "eval_fraction"),
        ({"eval_fraction": 1.0}, "eval_fraction"),
        ({"on_bad_rows": "skip"}, "on_bad_rows"),
        ({"max_train_rows": 0}, "max_train_rows"),
        ({"max_eval_rows": -3}, "max_eval_rows"),
        ({"split": ""}, "split"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        load_preference_data(EMBEDDED_DATA, **kwargs)


def test_preference_data_validates_itself():
    data = load_preference_data(EMBEDDED_DATA, max_train_rows=4, max_eval_rows=2)
    with pytest.raises(ValueError, match="n_dropped"):
        PreferenceData(data.train, data.eval, "x", n_dropped=2, dropped={"empty_text": 1})
    with pytest.raises(ValueError, match="unknown reasons"):
        PreferenceData(data.train, data.eval, "x", n_dropped=1, dropped={"bad_vibes": 1})
    with pytest.raises(ValueError, match="columns"):
        PreferenceData(data.train.remove_columns("rejected"), data.eval, "x")
    with pytest.raises(ValueError, match="empty"):
        PreferenceData(data.train.select([]), data.eval, "x")


# -------------------------------------------------------------------------------------------- fingerprint


def test_fingerprint_tracks_row_content_only(tmp_path: Path):
    rows = _explicit_string_rows(10)
    path = _write_jsonl(tmp_path / "a.jsonl", rows)
    base = load_preference_data(str(path)).fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert load_preference_data(str(path)).fingerprint() == base
    copy = tmp_path / "elsewhere" / "b.jsonl"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    assert load_preference_data(str(copy)).fingerprint() == base

    changed = [dict(row) for row in rows]
    changed[4]["rejected"] = " 99"
    assert load_preference_data(str(_write_jsonl(tmp_path / "c.jsonl", changed))).fingerprint() != base
    # Moving rows between train and eval changes it too.
    assert load_preference_data(str(path), seed=1).fingerprint() != base


# ----------------------------------------------------------------------------------- accepted by TRL


def test_loaded_rows_render_with_the_chat_template(tokenizer, shared_dir: Path, tmp_path: Path):
    embedded = load_preference_data(EMBEDDED_DATA)
    row = embedded.eval[0]
    assert is_conversational(row) and maybe_extract_prompt(row) == row
    rendered = maybe_apply_chat_template(row, tokenizer)
    assert set(rendered) == set(COLUMNS)
    assert rendered["prompt"].rstrip().endswith("assistant")
    assert row["prompt"][0]["content"] in rendered["prompt"]
    assert rendered["chosen"].startswith(row["chosen"][0]["content"])
    assert rendered["rejected"].startswith(row["rejected"][0]["content"])
    assert tokenizer.eos_token in rendered["chosen"]

    # Every bundled pair fits the 128-token training budget with the chat template applied.
    for split in (embedded.train, embedded.eval):
        for pair in split:
            for completion in ("chosen", "rejected"):
                messages = pair["prompt"] + pair[completion]
                ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
                assert len(ids) <= 128, pair

    hh = load_preference_data(str(shared_dir / HH_FILE), on_bad_rows="drop")
    rendered = apply_chat_template(hh.train[0], tokenizer)
    assert hh.train[0]["prompt"][-1]["content"] in rendered["prompt"]
    assert rendered["chosen"].startswith(hh.train[0]["chosen"][0]["content"])

    standard = load_preference_data(str(_write_jsonl(tmp_path / "s.jsonl", _explicit_string_rows(4))))
    assert maybe_apply_chat_template(standard.train[0], tokenizer) == standard.train[0]
