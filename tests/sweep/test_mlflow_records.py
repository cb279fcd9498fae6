"""What a sweep logs to MLflow besides its trials' reports: params a chart can use, the parent run's name and
descriptions, the trials' closing summaries and verdict numbers, and the saved view and URL of the UI."""

from __future__ import annotations

import json
import math
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest

from sweep.config import load_sweep_config
from sweep.driver.outcome import SweepOutcome
from sweep.tracking.records import (
    claims_summary,
    describe_grid,
    history_numbers,
    parent_params,
    parent_run_name,
    trial_params,
    trial_summary,
    verdict_table,
)
from sweep.tracking.summaries import trial_note, verdict_codes, verdict_metrics
from sweep.tracking.views import experiment_url, view_envelope, view_state
from trainers.protocol import Failure, TrialStatus


def test_parent_run_name_and_description_summarise_the_grid():
    config = load_sweep_config("smoke", ["grid.beta_kl=[0.05,0.1,2]", "grid.seeds=[0,1]"])
    assert parent_run_name(config, 12) == "smoke: dpo, dlrml x beta_kl 0.05-2 (12 trials)"
    text = describe_grid(config, 12, 4)
    assert "- beta_kl: 0.05, 0.1, 2" in text and "seeds: 0, 1" in text and "12 trials x 4 steps" in text
    assert Failure.FAILED.meaning in text and Failure.UNSTABLE.meaning in text


def test_parent_params_are_the_few_a_user_filters_on():
    config = load_sweep_config("smoke", ["grid.beta_kl=[0.05,0.1]"])
    params = parent_params(config, 4)
    assert len(params) <= 12
    assert params["losses"] == "dpo, dlrml" and params["beta_kl"] == "0.05, 0.1" and params["model"] == "tiny-random"


def _trial_config(loss: str, beta_kl: float, beta_mix: float | None) -> dict:
    return {
        "trial": {"loss": {"name": loss, "beta_kl": beta_kl, "beta_mix": beta_mix, "tau": 0.05}, "seed": 0},
        "train": {key: 1 for key in ("learning_rate", "per_device_batch_size", "grad_accum", "max_steps", "epochs")}
        | {"model": "tiny-random", "data": "embedded", "precision": "fp32", "max_length": 64},
        "resources": {"num_workers": 1},
    }


def test_beta_mix_is_the_number_the_loss_uses_or_absent():
    dlrml = trial_params(_trial_config("dlrml", 1.0, 0.2))
    assert (dlrml["beta_mix"], dlrml["log10_beta_kl"]) == (0.2, 0.0)
    assert dlrml["log10_beta_mix"] == pytest.approx(math.log10(0.2))
    discopop = trial_params(_trial_config("discopop", 0.05, None))  # DiscoPOP ties beta_mix to beta_kl
    assert discopop["beta_mix"] == 0.05 and discopop["log10_beta_mix"] == pytest.approx(math.log10(0.05))
    dpo = trial_params(_trial_config("dpo", 0.1, None))
    assert not {"beta_mix", "log10_beta_mix", "tau"} & set(dpo) and dpo["beta_kl"] == 0.1
    assert all(value is not None and value != "None" for value in (*dlrml.values(), *dpo.values()))


def test_verdict_numbers_use_the_protocols_words():
    assert verdict_metrics("stable") == {"verdict_code": 0, "failed": 0, "unstable": 0}
    assert verdict_metrics("stalled") == {"verdict_code": 1, "failed": 1, "unstable": 0}
    assert verdict_metrics("diverged") == {"verdict_code": TrialStatus.DIVERGED.code, "failed": 1, "unstable": 1}
    assert verdict_metrics("errored") == {"verdict_code": TrialStatus.ERRORED.code}  # neither failed nor not
    for status in TrialStatus:
        metrics = verdict_metrics(status)
        for category in Failure:
            assert metrics.get(category.value) == (float(category.includes(status)) if status.has_verdict else None)
    assert verdict_codes().startswith("0 stable, 1 stalled") and "8 errored" in verdict_codes()
    note = trial_note("collapsed", "likelihood_collapse: eval_logps/chosen_drift_per_token=-2 vs -1.5 at step 8")
    assert note.startswith("**collapsed** (failed, unstable)") and "=-2 vs -1.5 at step 8" in note
    assert trial_note("stable", None, {"steps": 10}) == (
        "**stable** (not failed, not unstable)\n\n10 steps\n\n" + " · ".join(f.meaning for f in Failure)
    )
    assert "no reason recorded" in trial_note("errored", None)


def test_a_summary_has_no_nan_placeholder():
    row = pd.Series(
        {
            "reason": "no_learning: ...",
            "steps": 10,
            "attempts": 2,
            "diverged_step": math.nan,
            "eval_accuracy": 0.56,
            "chosen_logps_drift": math.nan,
            "nan_step_fraction": 0.0,
            "mt_bench_score": math.nan,
            "mt_bench_reason": "not selected (mt_bench.policy=none)",
        }
    )
    summary = trial_summary(row)
    assert summary == {
        "reason": "no_learning: ...",
        "steps": 10,
        "attempts": 2,
        "eval_accuracy": 0.56,
        "nan_step_fraction": 0.0,
        "mt_bench_reason": "not selected (mt_bench.policy=none)",
    }


def test_history_numbers_read_the_last_held_out_drift_and_the_non_finite_steps():
    history = pd.DataFrame(
        [
            {"step": 1, "report/type": 0, "loss": 0.69, "nan_inf/loss": 0.0},
            {"step": 2, "report/type": 1, "eval_logps/chosen_drift_per_token": -0.2},
            {"step": 2, "report/type": 0, "loss": 0.5, "nan_inf/loss": 0.0},
            {"step": 3, "report/type": 0, "loss": math.nan, "nan_inf/loss": 1.0},
            {"step": 4, "report/type": 0, "loss": 0.4, "nan_inf/grad": 1.0},
            {"step": 4, "report/type": 1, "eval_logps/chosen_drift_per_token": -1.8},
        ]
    )
    assert history_numbers(history) == {"chosen_logps_drift": -1.8, "nan_step_fraction": 0.5}
    assert all(math.isnan(v) for v in history_numbers(None).values())


def test_parent_description_tables_the_cells_and_heads_the_claims(tmp_path):
    trials = pd.DataFrame(
        [
            {"loss": "dpo", "form": "stable", "beta_kl": 0.1, "beta_mix": math.nan, "status": "stable"},
            {"loss": "dlrml", "form": "stable", "beta_kl": 0.1, "beta_mix": 0.2, "status": "stalled"},
            {"loss": "dlrml", "form": "stable", "beta_kl": 0.1, "beta_mix": 0.2, "status": "diverged"},
            {"loss": "dlrml", "form": "stable", "beta_kl": 0.1, "beta_mix": 0.2, "status": "pruned"},
        ]
    ).assign(eval_accuracy=[0.8, 0.5, math.nan, 0.6])
    cells = pd.DataFrame(
        [
            {"loss": "dlrml", "form": "stable", "beta_kl": 0.1, "beta_mix": 0.2, "verdict": "stalled"},
            {"loss": "dpo", "form": "stable", "beta_kl": 0.1, "beta_mix": math.nan, "verdict": "stable"},
        ]
    )
    table = verdict_table(trials, cells).splitlines()
    assert table[0] == "| loss | form | beta_kl | beta_mix | trials | failed | unstable | accuracy | verdict |"
    # Failed and unstable over the trials with a verdict (the pruned one has none); accuracy over every trial with one.
    assert table[2] == (
        "| dlrml | stable | 0.1 | 0.2 | 1 stalled, 1 diverged, 1 pruned | 2/2 | 1/2 | 0.550 | **stalled** |"
    )
    assert table[3].startswith("| dpo | stable | 0.1 | ")
    assert table[3].endswith("| 1 stable | 0/1 | 0/1 | 0.800 | **stable** |")
    claims = tmp_path / "claims.md"
    claims.write_text("# Claims: s\n\n1 trial(s): 0 supported\n\n| claim | measured | verdict |\n\n## a: x\n\nmore")
    assert claims_summary(claims) == "1 trial(s): 0 supported\n\n| claim | measured | verdict |"


def test_the_saved_view_and_url_open_the_model_training_view_on_the_sweeps_trials():
    url = experiment_url("http://127.0.0.1:5000/", "7", "smoke", chart=True)
    parsed = urlparse(url)
    assert (parsed.scheme, parsed.netloc, parsed.path) == ("http", "127.0.0.1:5000", "/")
    route, query = parsed.fragment.split("?")
    assert route == "/experiments/7/runs"
    assert parse_qs(query) == {
        "workflowType": ["machine_learning"],
        "viewStateShareKey": ["dlrml-stability-smoke"],
        "compareRunsMode": ["CHART"],
    }
    assert experiment_url("sqlite:///mlflow.db", "1").startswith("http://127.0.0.1:5000/#/experiments/1/runs?")
    envelope = json.loads(view_envelope("smoke"))
    assert envelope["name"] == "smoke: stability" and json.loads(envelope["state"]) == view_state("smoke")
    state = view_state("smoke")
    assert "tags.`dlrml.sweep` = 'smoke'" in state["searchFilter"]
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "verdict"}]
    charts = state["compareRunCharts"]
    assert [c["type"] for c in charts] == ["PARALLEL", "PARALLEL"]
    # Where the LRML family fails (every such trial with a verdict); then every loss with its held-out accuracy.
    assert (charts[0]["selectedParams"], charts[0]["selectedMetrics"]) == (
        ["loss", "beta_kl", "beta_mix"],
        ["final/failed"],
    )
    assert (charts[1]["selectedParams"], charts[1]["selectedMetrics"]) == (
        ["loss", "beta_kl"],
        ["final/eval_accuracy", "final/failed"],
    )
    assert len(view_envelope("smoke")) < 20000  # MLflow's limit on an experiment tag's value


def test_the_closing_lines_link_the_model_training_view_of_a_local_store_too():
    outcome = SweepOutcome(
        stability_map=None,
        trials=pd.DataFrame(),
        tracking_uri="sqlite:////work/mlflow.db",
        parent_run_id="abc",
        experiment_id="3",
        sweep_name="default",
    )
    serve, table, chart = outcome._mlflow_lines()
    assert serve == (
        "MLflow: sqlite:////work/mlflow.db; browse it with `mlflow ui --backend-store-uri sqlite:////work/mlflow.db` "
        "(http://127.0.0.1:5000)"
    )
    assert table.startswith("MLflow: http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&")
    assert table.endswith("viewStateShareKey=dlrml-stability-default (runs by verdict; parent run abc)")
    assert chart.endswith("&compareRunsMode=CHART (stability chart)")
    outcome.experiment_id = None  # the tracking server was down for the whole sweep
    assert outcome._mlflow_lines() == ["MLflow: sqlite:////work/mlflow.db (runs not delivered yet)"]
