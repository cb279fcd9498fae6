"""The sweep-level proof that the numerical/genuine classifier works: a real two-trial sweep, DiscoPOP as published
(``literal``) beside its log-space form (``stable``), at a setting where margins pass the literal form's fp32 range.

The literal form's ``sigmoid(a) * exp(-beta * rho)`` is ``0 * inf = NaN`` once ``rho < -88.7 / beta`` (-17.7 nats at
beta 5), where the true loss is finite (about ``-beta * rho``): a *numerical* failure. Long answers
(``train.data=embedded-long``) let one optimizer step move a pair's summed log-ratio margin that far: on the tiny
random model at learning rate 1e-2 (constant), with the same 4 pairs in every batch, DiscoPOP's wrong-way slope at
``rho = 0`` (README, "Why LRML runs stall from the start") pushes every margin down at step 1, and at step 2 the
per-pair margins were -3.4, -4.3, -25.9 and -3.9 nats (measured on this repository's 2-core machine; the lowest
is 8 nats past the overflow point). At 1e-3 and 3e-3 the lowest was -9.3 and -19.0 nats, too close to the edge to
test on. The stable form trains through the same margins: its loss (46.8 at step 2) stays within the divergence
monitor's bounds after the smoke config's 2 grace steps, and it ends with a behavioural verdict.
"""

from __future__ import annotations

import pandas as pd
import pytest

from tests.procs import make_env
from tests.sweeps import run_sweep
from trainers.collapse import REASONS
from trainers.protocol import TrialStatus

pytestmark = [pytest.mark.slow, pytest.mark.long]

BETA = 5.0
MAX_STEPS = 3
OVERFLOW_OVERRIDES = [
    "grid.losses=[discopop]",
    f"grid.beta_kl=[{BETA}]",
    "grid.beta_mix=[]",
    "grid.forms=[literal,stable]",
    "train.data=embedded-long",
    "train.max_length=256",  # every long pair whole (tests/test_long_form.py)
    "train.max_train_rows=4",
    "train.per_device_batch_size=4",
    "train.learning_rate=1e-2",
    "train.lr_scheduler=constant",
    f"train.max_steps={MAX_STEPS}",
    f"train.eval_steps={MAX_STEPS}",
]


def test_literal_discopop_overflows_as_numerical_where_the_stable_form_trains_on(tmp_path, short_tmp):
    results = tmp_path / "results"
    proc = run_sweep(
        *("--config", "smoke", "--name", "overflow", "--no-mlflow", f"storage_path={results}"),
        *OVERFLOW_OVERRIDES,
        cwd=tmp_path,
        env=make_env(short_tmp),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = pd.read_csv(results / "overflow" / "map" / "trials.csv").set_index("form")
    assert sorted(trials.index) == ["literal", "stable"] and set(trials["beta_kl"]) == {BETA}

    literal, stable = trials.loc["literal"], trials.loc["stable"]
    assert literal["status"] == TrialStatus.DIVERGED, literal.to_dict()
    assert str(literal["reason"]) in {f"{reason} (numerical)" for reason in REASONS if reason.startswith("non_finite")}
    assert literal["divergence_kind"] == "numerical"
    assert 1 < literal["diverged_step"] < MAX_STEPS  # after the first step has moved the margins, before the end

    assert stable["status"] != TrialStatus.DIVERGED, stable.to_dict()
    assert TrialStatus(stable["status"]).trained_to_end and stable["steps"] == MAX_STEPS
    assert pd.isna(stable["divergence_kind"])

    cells = pd.read_csv(results / "overflow" / "map" / "cells.csv").set_index("form")
    assert cells.loc["literal", "verdict"] == TrialStatus.DIVERGED
    assert cells.loc["stable", "verdict"] != TrialStatus.DIVERGED
