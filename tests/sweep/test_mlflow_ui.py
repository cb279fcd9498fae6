"""MLflow as a new user meets it: the smoke sweep (with a divergent beta, so that verdicts differ) logged to a real
``mlflow server`` on 127.0.0.1, then read back as the UI reads it — through the MLflow client (descriptions, verdict
numbers on every trial, numeric beta_mix, the config artifact, few params, the saved view) and in headless Chromium
from the URLs the sweep printed (the model-training view with the runs, the stability chart).

The browser checks are skipped, saying why, where no Chromium is installed (``apt-get install chromium``;
``scripts/bootstrap.sh dev`` installs it when it runs as root with apt-get).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweep.tracking.runs import ATTEMPT_TAG, NOTE_TAG, ROLE_TAG, SUPERSEDED_TAG, SWEEP_TAG
from sweep.tracking.views import VIEW_TAG_PREFIX, experiment_url, view_id
from tests.browser import Browser, find_browser
from tests.procs import Finished, make_env
from tests.sweeps import DIVERGENT_BETA, STABLE_BETA, MlflowServer, run_sweep, start_mlflow_server
from trainers.protocol import Failure, TrialStatus

pytestmark = [pytest.mark.slow, pytest.mark.long]

NAME = "ui"
OVERRIDES = [  # tests/sweep/test_sweep.py: at beta_kl 500 both losses diverge within two steps, at 0.1 they train
    f"grid.beta_kl=[{STABLE_BETA},{DIVERGENT_BETA}]",
    "train.learning_rate=1e-3",
    "train.divergence.grace_steps=1",
]
TRIAL_PARAMS_AT_MOST = 20
PARENT_PARAMS_AT_MOST = 12


@dataclass
class LoggedSweep:
    """The finished sweep, its trials.csv, and the experiment as the tracking server holds it."""

    proc: Finished
    trials: pd.DataFrame
    server: MlflowServer
    client: MlflowClient
    experiment_id: str
    parent: object
    runs: dict  # trial_id -> current nested run


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    yield from start_mlflow_server(tmp_path_factory.mktemp("mlflow_ui_server"))


@pytest.fixture(scope="module")
def sweep(server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggedSweep]:
    cwd = tmp_path_factory.mktemp("mlflow_ui_sweep")
    ray_tmp = Path(tempfile.mkdtemp(prefix="dlrml-ray-", dir="/tmp"))
    try:
        proc = run_sweep(
            *("--config", "smoke", "--name", NAME, "--mlflow-uri", server.url),
            f"storage_path={cwd / 'results'}",
            *OVERRIDES,
            cwd=cwd,
            env=make_env(ray_tmp),
        )
        assert proc.returncode == 0, f"sweep failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
        client = MlflowClient(server.url)
        experiment = client.get_experiment_by_name("dlrml-sweep")
        runs = client.search_runs([experiment.experiment_id], f"tags.`{SWEEP_TAG}` = '{NAME}'", max_results=1000)
        (parent,) = [r for r in runs if r.data.tags[ROLE_TAG] == "sweep"]
        current = {r.data.tags["dlrml.trial_id"]: r for r in runs if r.data.tags[ROLE_TAG] == "trial"}
        yield LoggedSweep(
            proc=proc,
            trials=pd.read_csv(cwd / "results" / NAME / "map" / "trials.csv"),
            server=server,
            client=client,
            experiment_id=experiment.experiment_id,
            parent=parent,
            runs=current,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _printed_urls(sweep: LoggedSweep) -> list[str]:
    return re.findall(r"^MLflow: (http\S+)", sweep.proc.stdout, re.M)


def test_the_sweep_prints_its_model_training_view(sweep):
    table, chart = _printed_urls(sweep)
    assert table == experiment_url(sweep.server.url, sweep.experiment_id, NAME)
    assert chart == experiment_url(sweep.server.url, sweep.experiment_id, NAME, chart=True)
    assert f"/#/experiments/{sweep.experiment_id}/runs?workflowType=machine_learning" in table
    assert "View experiment at" not in sweep.proc.stdout  # MLflow's own links open the GenAI view


def test_the_verdicts_differ(sweep):
    assert set(sweep.trials["status"]) >= {"diverged"} and len(set(sweep.trials["status"])) >= 2


def test_every_trial_run_says_its_verdict_in_numbers_and_words(sweep):
    assert set(sweep.runs) == set(sweep.trials["trial_id"])  # one current run per trial, nothing superseded
    for row in sweep.trials.itertuples():
        run = sweep.runs[row.trial_id]
        metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
        status = TrialStatus(row.status)
        assert metrics["final/verdict_code"] == status.code
        for category in Failure:  # 0/1 where the trial has a verdict; absent (never a placeholder) where not
            wanted = float(category.includes(status)) if status.has_verdict else None
            assert metrics.get(f"final/{category.value}") == wanted, (row.trial_id, category)
        note = tags[NOTE_TAG]
        assert note.startswith(f"**{status.value}**") and (pd.isna(row.reason) or row.reason in note), note
        if not pd.isna(row.eval_accuracy):
            assert metrics["final/eval_accuracy"] == pytest.approx(row.eval_accuracy)
        assert metrics["final/nan_step_fraction"] == pytest.approx(row.nan_step_fraction)
        if status.trained_to_end:
            assert math.isfinite(metrics["final/chosen_logps_drift"])
        # Never a NaN placeholder (a metric a run does not have is absent); only a divergence logs NaN/Inf steps.
        final = {k: v for k, v in metrics.items() if k.startswith("final/")}
        assert all(math.isfinite(v) for v in final.values()), final
        if status != TrialStatus.DIVERGED:
            assert all(math.isfinite(v) for v in metrics.values()), metrics
        assert tags[ATTEMPT_TAG] == str(int(metrics["final/attempts"])) == str(row.attempts)
        assert tags[SUPERSEDED_TAG] == "false"
        # Params a chart can use: beta_mix is the number the loss uses (absent for DPO), betas also as log10.
        assert len(params) <= TRIAL_PARAMS_AT_MOST
        assert float(params["log10_beta_kl"]) == pytest.approx(math.log10(row.beta_kl))
        if row.loss == "dpo":
            assert "beta_mix" not in params and "log10_beta_mix" not in params
        else:
            assert float(params["beta_mix"]) == row.beta_mix == 0.2
            assert float(params["log10_beta_mix"]) == pytest.approx(math.log10(0.2))


def test_the_parent_run_is_described_by_its_cells_and_claims_and_holds_the_config(sweep):
    parent = sweep.parent
    note = parent.data.tags[NOTE_TAG]
    assert "| loss | form | beta_kl | beta_mix | trials | failed | unstable | accuracy | verdict |" in note
    assert "| claim | tests | measured | verdict |" in note and "### Claims" in note
    assert parent.data.metrics == {}  # no cell/* metrics
    assert len(parent.data.params) <= PARENT_PARAMS_AT_MOST
    assert parent.data.params["losses"] == "dpo, dlrml" and parent.data.params["name"] == NAME
    path = sweep.client.download_artifacts(parent.info.run_id, "config.yaml", tempfile.mkdtemp(dir="/tmp"))
    config = yaml.safe_load(Path(path).read_text())
    assert config["name"] == NAME and config["grid"]["beta_kl"] == [STABLE_BETA, DIVERGENT_BETA]
    assert config["train"]["divergence"]["grace_steps"] == 1


def test_the_experiment_is_described_and_its_saved_view_selects_the_current_trials(sweep):
    experiment = sweep.client.get_experiment(sweep.experiment_id)
    assert Failure.FAILED.meaning in experiment.tags[NOTE_TAG]
    envelope = json.loads(experiment.tags[VIEW_TAG_PREFIX + view_id(NAME)])
    state = json.loads(envelope["state"])
    assert envelope["name"] == f"{NAME}: stability"
    found = sweep.client.search_runs([sweep.experiment_id], state["searchFilter"], max_results=1000)
    assert {r.info.run_id for r in found} == {r.info.run_id for r in sweep.runs.values()}


# ------------------------------------------------------------------------------------------------ in a browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = find_browser()
    if executable is None:
        pytest.skip("no Chromium installed (apt-get install chromium; scripts/bootstrap.sh dev does as root)")
    chromium = Browser(executable)
    try:
        yield chromium
    finally:
        chromium.close()


def test_the_printed_url_opens_the_model_training_view_with_the_runs(sweep, browser, tmp_path):
    table, _ = _printed_urls(sweep)
    browser.open(table)
    names = [run.info.run_name for run in sweep.runs.values()]  # e.g. "dlrml bkl=0.1 bmix=0.2 seed=0"
    browser.wait_for(
        f"{json.dumps(names)}.every(name => document.body.innerText.includes(name))", f"every trial's run ({names})"
    )
    text = browser.text()
    groups = {f"Group: {status}" for status in sweep.trials["status"]}
    assert all(group in text for group in groups), text[:2000]  # grouped by verdict
    assert "workflowType=machine_learning" in browser.evaluate("location.href")
    # The model-training view's experiment menu (Runs, Models, Traces), not the GenAI one (Overview, Judges, ...).
    assert "Models" in text and "Judges" not in text and "Sessions" not in text
    assert f"{NAME}: stability" in text  # the saved view is the one shown
    for column in ("beta_mix", "verdict", "final/failed"):
        assert column in text
    browser.screenshot(tmp_path / "runs.png")
    # One click (the chart view's toggle above the table) and the stability charts are there.
    browser.evaluate("document.querySelector('input[value=CHART]').click()")
    _check_stability_charts(browser, sweep.trials)
    browser.screenshot(tmp_path / "chart.png")


def test_the_chart_url_opens_the_stability_charts(sweep, browser):
    _, chart = _printed_urls(sweep)
    browser.open("about:blank")
    browser.open(chart)
    _check_stability_charts(browser, sweep.trials)


CHART_CARD = "[data-testid=experiment-view-compare-runs-card]"
AXES = (
    "[...document.querySelectorAll('.parcoords')].map(chart => [...chart.querySelectorAll('.axis')].map(axis =>"
    " ({label: axis.querySelector('text.label')?.textContent,"
    " ticks: [...axis.querySelectorAll('text:not(.label)')].map(t => t.textContent.trim()).filter(Boolean)})))"
)
"""Each parallel-coordinates chart's axes: ``{label, ticks}``."""


def _check_stability_charts(browser: Browser, trials: pd.DataFrame) -> None:
    """Both parallel-coordinates charts, their axes and the runs they draw (the page draws a chart only while it is in
    view: the second is scrolled to)."""

    def chart_with(label: str) -> str:
        return f"{AXES}.find(axes => axes.length >= 4 && axes.some(axis => axis.label === {json.dumps(label)}))"

    first = browser.wait_for(chart_with("beta_mix"), "the parallel-coordinates chart over beta_mix")
    second = browser.wait_for(
        chart_with("final/eval_accuracy"),
        "the parallel-coordinates chart of every loss",
        before=browser.scroll_below(CHART_CARD, 200),
    )
    assert [axis["label"] for axis in first] == ["loss", "beta_kl", "beta_mix", "final/failed"], first
    assert [axis["label"] for axis in second] == ["loss", "beta_kl", "final/eval_accuracy", "final/failed"], second
    # The first draws every LRML-family trial with a verdict, the diverged one at the largest beta_kl included (the
    # axis reaches it); the second every loss, DPO included.
    assert first[0]["ticks"] == ["dlrml"] and f"{trials['beta_kl'].max():g}" in first[1]["ticks"], first
    assert set(second[0]["ticks"]) == {"dpo", "dlrml"}, second
