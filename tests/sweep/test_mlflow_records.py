"""What a sweep logs to MLflow besides its trials' reports: parent run name, description and cell metrics."""

from __future__ import annotations

import math

import pandas as pd

from sweep.config import load_sweep_config
from sweep.tracking.records import cell_metrics, describe_grid, parent_run_name


def test_parent_run_name_and_description_summarise_the_grid():
    config = load_sweep_config("smoke", ["grid.beta_kl=[0.05,0.1,2]", "grid.seeds=[0,1]"])
    assert parent_run_name(config, 12) == "smoke: dpo, dlrml x beta_kl 0.05-2 (12 trials)"
    text = describe_grid(config, 12, 4)
    assert "- beta_kl: 0.05, 0.1, 2" in text and "seeds: 0, 1" in text and "12 trials x 4 steps" in text


def test_cell_metrics_name_loss_form_and_betas_and_skip_nan():
    cells = pd.DataFrame(
        [
            {
                "loss": "dlrml",
                "form": "literal",
                "beta_kl": 0.05,
                "beta_mix": 0.2,
                "failed_rate": 1.0,
                "eval_accuracy_mean": 0.4,
            },
            {
                "loss": "dpo",
                "form": "stable",
                "beta_kl": 0.1,
                "beta_mix": math.nan,
                "failed_rate": math.nan,
                "eval_accuracy_mean": math.nan,
            },
        ]
    )
    assert cell_metrics(cells) == {
        "cell/dlrml_literal_bkl0.05_bmix0.2/failed_rate": 1.0,
        "cell/dlrml_literal_bkl0.05_bmix0.2/eval_accuracy": 0.4,
    }
