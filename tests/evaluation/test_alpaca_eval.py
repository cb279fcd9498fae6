"""AlpacaEval 2.0: file formats, weighted-judge log-prob parsing, win rates, the local judge, CLI and preflight."""

from __future__ import annotations

import fnmatch
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from evaluation.alpaca_eval.config import AlpacaEvalConfig
from evaluation.alpaca_eval.data import (
    BUNDLED_FILE,
    ModelOutput,
    load_annotations,
    load_model_outputs,
    write_annotations,
    write_model_outputs,
)
from evaluation.alpaca_eval.judge import FIRST, PairJudge, PairJudgment, parse_top_logprobs
from evaluation.alpaca_eval.metrics import fallback_lc_win_rate, fit_soft_logistic, length_features, win_rate
from evaluation.alpaca_eval.pipeline import (
    AlpacaEvalData,
    annotate,
    load_alpaca_eval_data,
    order_swapped,
    run_alpaca_eval,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# Rows laid out as in ``alpaca_eval_gpt4_baseline.json`` (key order dataset, instruction, output, generator); the
# texts are ours, the first instruction is the real file's first.
REAL_LAYOUT = [
    {
        "dataset": "helpful_base",
        "instruction": "What are the names of some famous actors that started their careers on Broadway?",
        "output": "Hugh Jackman, Sarah Jessica Parker and Lin-Manuel Miranda all began on Broadway.",
        "generator": "gpt4_1106_preview",
    },
    {
        "dataset": "koala",
        "instruction": 'Write """quotes""" and unicode: café, 数据.',
        "output": 'Done: """quotes""", café, 数据.\n',
        "generator": "gpt4_1106_preview",
    },
]


def test_model_outputs_round_trip_in_alpaca_eval_layout(tmp_path: Path) -> None:
    source = tmp_path / "alpaca_eval_gpt4_baseline.json"
    source.write_text(json.dumps(REAL_LAYOUT, indent=4, ensure_ascii=False), encoding="utf-8")
    rows = load_model_outputs(source)
    assert rows[1] == ModelOutput(**REAL_LAYOUT[1])
    written = write_model_outputs(tmp_path / "out" / "model_outputs.json", rows)
    assert json.loads(written.read_text(encoding="utf-8")) == REAL_LAYOUT


def test_bundled_instructions_are_alpaca_eval_model_outputs() -> None:
    rows = json.loads(BUNDLED_FILE.read_text(encoding="utf-8"))
    assert 16 <= len(rows) <= 24
    assert all(set(row) == {"instruction", "output", "generator", "dataset"} for row in rows)
    assert len({row["instruction"] for row in rows}) == len(rows)
    globs = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "evaluation"
    ]
    assert any(fnmatch.fnmatch(f"data/{BUNDLED_FILE.name}", glob) for glob in globs)  # ships with the package


def test_annotations_round_trip_with_nan_as_null(tmp_path: Path) -> None:
    rows = [
        {"instruction": "a", "output_1": "x", "generator_1": "base", "output_2": "y", "generator_2": "m"},
        {"instruction": "b", "output_1": "x", "generator_1": "base", "output_2": "yy", "generator_2": "m"},
    ]
    rows = [{**r, "annotator": "judge", "preference": p} for r, p in zip(rows, [1.75, math.nan], strict=True)]
    path = write_annotations(tmp_path / "annotations.json", rows)
    assert json.loads(path.read_text())[1]["preference"] is None  # alpaca_eval reads null as a missing preference
    loaded = load_annotations(path)
    assert loaded[0]["preference"] == 1.75 and math.isnan(loaded[1]["preference"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"instruction": "a"}', "non-empty JSON list"),
        ('[{"instruction": "", "output": "x"}]', "row 0: 'instruction' must be a non-empty string"),
        ('[{"instruction": "a", "output": "x"}, {"instruction": "b", "output": 3}]', "row 1: 'output' must be"),
        ('[{"instruction": "a", "output": "x", "generator": 1}]', "row 0: 'generator' must be a string"),
    ],
)
def test_malformed_outputs_file_names_the_row(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_model_outputs(path)


def test_malformed_annotation_preference_is_named(tmp_path: Path) -> None:
    row = {f: "x" for f in ("instruction", "output_1", "generator_1", "output_2", "generator_2", "annotator")}
    (tmp_path / "a.json").write_text(json.dumps([{**row, "preference": 2.5}]))
    with pytest.raises(ValueError, match=r"row 0: preference must lie in \[1, 2\]"):
        load_annotations(tmp_path / "a.json")


# ---------------------------------------------------------------- weighted judge parsing


def test_logprobs_present_give_the_weighted_probability() -> None:
    judgment = parse_top_logprobs([{"token": "M", "logprob": -0.1}, {"token": "m", "logprob": -2.4}, ("The", -5.0)])
    expected = math.exp(-2.4) / (math.exp(-2.4) + math.exp(-0.1))
    assert judgment.p_first == pytest.approx(expected) and judgment.problem is None


def test_one_label_missing_counts_as_probability_zero_and_whitespace_is_accepted() -> None:
    assert parse_top_logprobs([(" M", -0.3), ("Both", -1.0)]).p_first == 0.0
    assert parse_top_logprobs([("m", -3.0)]).p_first == 1.0


@pytest.mark.parametrize(
    ("top", "problem"),
    [
        ([("The", -0.1), ("A", -1.0)], "neither 'm' nor 'M'"),
        ([], "neither 'm' nor 'M'"),
        ([("m", "high")], "malformed log-prob 'high'"),
        ([("m", float("nan"))], "malformed log-prob nan"),
        ([("M", 2.0)], "malformed log-prob 2.0"),
        ([{"logprob": -1.0}], "malformed top_logprobs entry"),
        (None, "not a list"),
        ("m", "not a list"),
    ],
)
def test_missing_or_malformed_logprobs_give_no_judgment(top, problem: str) -> None:
    judgment = parse_top_logprobs(top)
    assert math.isnan(judgment.p_first) and problem in judgment.problem


# ---------------------------------------------------------------- metrics


def test_win_rate_on_a_hand_made_example() -> None:
    """Preferences 2, 1, 1.5, 1.8 and one unusable (NaN): y = p - 1 = (1, 0, 0.5, 0.8) over n = 4 valid.

    win rate = 100 * 2.3 / 4 = 57.5; deviations from 0.575 are (0.425, -0.575, -0.075, 0.225), squares sum to
    0.5675, sample variance 0.5675 / 3, standard error 100 * sqrt(0.5675 / 3) / 2 = 21.7466. Model wins (p > 1.5):
    2 and 1.8; one draw (1.5); one baseline win (1); discrete win rate 100 * (2 + 0.5 * 1) / 4 = 62.5.
    """
    metrics = win_rate([2.0, 1.0, 1.5, 1.8, math.nan])
    assert metrics["win_rate"] == pytest.approx(57.5)
    assert metrics["standard_error"] == pytest.approx(100 * math.sqrt(0.5675 / 3) / 2)
    assert metrics["standard_error"] == pytest.approx(21.7466, abs=1e-4)
    assert (metrics["n_wins"], metrics["n_draws"], metrics["n_wins_base"]) == (2, 1, 1)
    assert metrics["discrete_win_rate"] == pytest.approx(62.5)
    assert (metrics["n_total"], metrics["n_invalid"]) == (4, 1)


def test_lc_with_equal_lengths_is_the_penalised_win_rate() -> None:
    """No length difference: the GLM is sigmoid(theta); its optimum satisfies C * sum(sigmoid(theta) - y) + theta = 0,
    i.e. the win rate 57.5 % shrunk slightly towards 50 % by the penalty."""
    lc, (theta, length) = fallback_lc_win_rate([2.0, 1.0, 1.5, 1.8], [10] * 4, [10] * 4)
    assert 100 * (1 / (1 + math.exp(-theta))) == pytest.approx(lc)
    assert 100 * 4 * (lc / 100 - 0.575) + theta == pytest.approx(0.0, abs=1e-8)
    assert 57.3 < lc < 57.5 and length == 0.0


def test_lc_discounts_wins_that_come_from_length() -> None:
    """A model as good as the baseline at equal length (intercept 0) whose outputs are longer, with a judge that
    favours length (P(model wins) = sigmoid(-2 tanh(std_delta_len))): the raw win rate is far above 50 %, the LC win
    rate is 50 % up to the penalty's shrinkage and the sample."""
    rng = np.random.default_rng(0)
    base_len = rng.integers(200, 800, 2000)
    model_len = base_len + rng.normal(100, 100, 2000).round().astype(int)
    feature = length_features(base_len, model_len)
    preferences = 1 + 1 / (1 + np.exp(2 * feature))
    lc, (intercept, length) = fallback_lc_win_rate(preferences, base_len, model_len)
    assert win_rate(preferences)["win_rate"] > 70
    assert lc == pytest.approx(50.0, abs=0.5) and intercept == pytest.approx(0.0, abs=0.02)
    assert length == pytest.approx(-2.0, abs=0.05)


def test_soft_logistic_fit_recovers_known_weights() -> None:
    rng = np.random.default_rng(1)
    x = np.column_stack([np.ones(4000), rng.uniform(-1, 1, 4000)])
    y = 1 / (1 + np.exp(-(x @ np.array([0.5, -2.0]))))  # soft labels are the true probabilities
    assert fit_soft_logistic(x, y, c=1e6) == pytest.approx([0.5, -2.0], abs=1e-3)


# ---------------------------------------------------------------- annotation and position bias


class LongerIsBetter(PairJudge):
    """A deterministic judge (a real implementation of the interface): the longer output wins."""

    name = "longer-is-better"

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def judge_pairs(self, requests):
        self.requests += requests
        return [PairJudgment(1.0 if len(a) > len(b) else 0.0, FIRST) for a, b in map(shown_outputs, requests)]


def shown_outputs(request: tuple[str, str]) -> tuple[str, str]:
    """The outputs labelled m and M in a judge prompt, cut at the template's delimiters (an output may hold quotes)."""
    user = request[1]
    first = user.split('"model_identifier": "m",\n        "output": """', 1)[1]
    first, rest = first.split('"""\n    },\n    {\n        "model_identifier": "M"', 1)
    second = rest.split('"output": """', 1)[1].rsplit('"""\n    }\n}\n\n## Task', 1)[0]
    return first, second


def test_seeded_order_is_reproducible_and_preferences_are_unswapped() -> None:
    instructions = load_model_outputs(BUNDLED_FILE)
    swaps = [order_swapped(0, i.instruction) for i in instructions]
    assert swaps == [order_swapped(0, i.instruction) for i in instructions]
    assert 0 < sum(swaps) < len(swaps)
    assert swaps != [order_swapped(1, i.instruction) for i in instructions]

    data = AlpacaEvalData(instructions, None, list(range(len(instructions))), real=False)
    model = [ModelOutput(i.instruction, i.output + " And more.", "model", i.dataset) for i in instructions]
    judge = LongerIsBetter()
    rows = annotate(data, instructions, model, judge, order_seed=0)
    assert all(row["preference"] == 2.0 for row in rows)  # the model's longer output wins, whichever side it was on
    assert [row["swapped"] for row in rows] == swaps
    shown_first = [shown_outputs(request)[0] for request in judge.requests]
    assert [text == m.output for text, m in zip(shown_first, model, strict=True)] == swaps


# ---------------------------------------------------------------- local judge, end to end


def test_run_with_the_local_judge_writes_alpaca_eval_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    from trainers.models import load_model, load_tokenizer

    cfg = AlpacaEvalConfig(
        baseline=str(BUNDLED_FILE), limit=3, max_new_tokens=8, judge_model=str(tiny_model_dir), order_seed=3
    )
    model, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    result = run_alpaca_eval(model, tokenizer, cfg, tmp_path, "tiny")
    outputs = json.loads(result.outputs_path.read_text())
    assert [set(o) for o in outputs] == [{"instruction", "output", "generator", "dataset"}] * 3
    annotations = load_annotations(result.annotations_path)
    assert [a["generator_1"] for a in annotations] == ["dlrml_sweep_authors"] * 3
    assert all(1 <= a["preference"] <= 2 and a["order_seed"] == 3 for a in annotations)
    expected = 100 * np.mean([a["preference"] - 1 for a in annotations])
    assert result.win_rate == pytest.approx(expected)
    scores = json.loads((tmp_path / "alpaca_eval_scores.json").read_text())
    assert "fallback GLM" in scores["metrics"]["lc_method"] and "not AlpacaEval's 805" in scores["metrics"]["lc_method"]
    assert 0 <= result.lc_win_rate <= 100


# ---------------------------------------------------------------- CLI and sweep preflight


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--baseline-model is required"),
        (["--baseline", "/nonexistent.json"], "file not found: /nonexistent.json"),
        (["--baseline-model", "embedded", "--set", "api_key_env=sk-123"], "NAME of an environment variable"),
    ],
)
def test_cli_rejects_bad_input_before_loading_a_model(tmp_path, capsys, args: list[str], message: str) -> None:
    from evaluation.alpaca_eval.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--model", "embedded", "--out", str(tmp_path), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_reports_an_unset_judge_key(tmp_path, capsys, monkeypatch) -> None:
    from evaluation.alpaca_eval.__main__ import main

    monkeypatch.delenv("DLRML_TEST_JUDGE_KEY", raising=False)
    argv = ["--model", "embedded", "--out", str(tmp_path), "--baseline", str(BUNDLED_FILE)]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--judge-backend", "openai", "--api-key-env", "DLRML_TEST_JUDGE_KEY"])
    assert exc.value.code == 2 and "DLRML_TEST_JUDGE_KEY is not set" in capsys.readouterr().err


def test_hub_instructions_fail_clearly_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="alpaca_eval_gpt4_baseline.json"):
        load_alpaca_eval_data(AlpacaEvalConfig(instructions="hub"))


@pytest.mark.parametrize("benchmark", ["mt_bench", "alpaca_eval"])
def test_dry_run_reports_an_unset_judge_key_before_any_trial(benchmark: str, monkeypatch, capsys) -> None:
    from sweep import run

    monkeypatch.delenv("DLRML_TEST_JUDGE_KEY", raising=False)
    code = run.main(
        [
            "--config",
            "smoke",
            "--dry-run",
            f"{benchmark}.policy=all",
            f"{benchmark}.eval.judge_backend=openai",
            f"{benchmark}.eval.api_key_env=DLRML_TEST_JUDGE_KEY",
        ]
    )
    assert code == run.EXIT_BAD_INPUT
    assert f"{benchmark}.eval.api_key_env: environment variable DLRML_TEST_JUDGE_KEY" in capsys.readouterr().err


def _real_size_annotations(rng: np.random.Generator) -> list[dict]:
    """805 annotations (AlpacaEval's instruction count) whose judge favours the longer output."""
    rows = []
    for k in range(805):
        base, model = "x" * int(rng.integers(100, 900)), "y" * int(rng.integers(100, 1200))
        p = 1 + 1 / (1 + math.exp(-(len(model) - len(base)) / 300))
        rows.append(
            {"instruction": f"i{k}", "output_1": base, "generator_1": "gpt4_1106_preview", "output_2": model}
            | {"generator_2": "mine", "annotator": "weighted_alpaca_eval_gpt4_turbo", "preference": p, "hub_index": k}
        )
    return rows


def test_alpaca_eval_package_lc_is_used_when_its_tables_are_available(tmp_path: Path, monkeypatch) -> None:
    """With ``alpaca_eval`` installed: offline, its LC fails for want of the hub's tables and the fallback says why;
    with the tables (synthetic stand-ins here, served where it downloads them) its own GLM gives the LC."""
    glm = pytest.importorskip("alpaca_eval.metrics.glm_winrate")
    import pandas as pd

    from evaluation.alpaca_eval.metrics import LC_PACKAGE, alpaca_metrics

    rng = np.random.default_rng(0)
    annotations = _real_size_annotations(rng)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = alpaca_metrics(annotations, real_instructions=True)
    assert "get_length_controlled_winrate failed" in offline["lc_method"]

    difficulty = rng.normal(0, 1, 805)
    gamed = pd.DataFrame(
        {"model": "gamed", "index": np.tile(np.arange(805), 2), "preference": rng.uniform(0, 1, 1610)}
        | {"std_delta_len": rng.normal(0, 1, 1610), "instruction_difficulty": np.tile(difficulty, 2)}
        | {"not_gamed_baseline": False}
    )
    gamed.to_csv(tmp_path / "df_gamed.csv", index=False)
    pd.Series(difficulty, name="instruction_difficulty").to_csv(tmp_path / "instruction_difficulty.csv")
    monkeypatch.setattr(glm, "hf_hub_download", lambda repo_id, filename, **kwargs: str(tmp_path / filename))
    metrics = alpaca_metrics(annotations, real_instructions=True)
    assert metrics["lc_method"] == LC_PACKAGE and 0 < metrics["length_controlled_winrate"] < 100
    assert metrics["win_rate"] == offline["win_rate"]


def test_resumed_sweep_reuses_reference_outputs_only_if_they_cover_the_instructions(tmp_path: Path) -> None:
    from sweep.scoring.alpaca_eval.score import _covers

    rows = load_model_outputs(BUNDLED_FILE)[:2]
    path = write_model_outputs(tmp_path / "model_outputs.json", rows)
    assert _covers(path, AlpacaEvalConfig(limit=2))
    assert not _covers(path, AlpacaEvalConfig(limit=3))
    assert not _covers(tmp_path / "missing.json", AlpacaEvalConfig(limit=1))


def test_cli_runs_against_a_baseline_model_and_prints_scores(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    from evaluation.alpaca_eval.__main__ import main

    tiny = str(tiny_model_dir)
    argv = ["--model", tiny, "--model-id", "policy", "--baseline-model", tiny, "--out", str(tmp_path / "out")]
    assert main([*argv, "--limit", "2", "--max-new-tokens", "4", "--judge-model", tiny, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "length-controlled win rate" in printed and "LC method: fallback GLM" in printed
    baseline = load_model_outputs(tmp_path / "out" / "baseline" / "model_outputs.json")
    annotations = load_annotations(tmp_path / "out" / "annotations.json")
    assert [a["generator_1"] for a in annotations] == [baseline[0].generator] * 2 == [tiny_model_dir.name] * 2
    assert {a["generator_2"] for a in annotations} == {"policy"}


def test_a_trial_both_benchmarks_selected_keeps_both_in_its_tag() -> None:
    import pandas as pd

    from sweep.scoring.alpaca_eval.score import selected_for

    assert selected_for(pd.Series({"status": "stable", "mt_bench_reason": None})) == "mt_bench,alpaca_eval"
    assert selected_for(pd.Series({"status": "stable", "mt_bench_reason": "failed: JudgeError"})).startswith("mt_")
    assert selected_for(pd.Series({"status": "stable", "mt_bench_reason": "not selected (top_k)"})) == "alpaca_eval"
    assert selected_for(pd.Series({"status": "stable"})) == "alpaca_eval"
