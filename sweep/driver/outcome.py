"""The driver's last phase: one row per finished Tune trial, and what the finished sweep produced."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sweep.columns import AlpacaColumn, MTBenchColumn
from sweep.config import SweepConfig
from sweep.scoring.alpaca_eval.score import failed_evaluations
from sweep.scoring.tasks import EVALUATION_FAILED
from sweep.stability.map import StabilityMap
from sweep.stability.table import format_cells_table
from sweep.trials.rows import trial_row
from trainers.protocol import TrialStatus


def collect_trials(results, config: SweepConfig, storage_path: str) -> pd.DataFrame:
    """One row per trial with its final status, from Tune's results (also after a resume); see
    :func:`sweep.trials.rows.trial_row`."""
    from sweep.trials.trainable import trial_attempts, trial_output_dir

    rows = []
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        attempts = trial_attempts(trial_output_dir(storage_path, config.name, trial_id))
        rows.append(
            trial_row(
                result.config,
                result.metrics_dataframe,
                metrics,
                result.error,
                trial_id=trial_id,
                divergence=config.train.divergence,
                verdicts=config.train.verdicts,
                attempts=attempts,
            )
        )
    return pd.DataFrame(rows)


@dataclass
class SweepOutcome:
    """What a finished sweep produced."""

    stability_map: StabilityMap
    trials: pd.DataFrame
    tracking_uri: str | None
    parent_run_id: str | None
    mlflow_pending: int = 0

    @property
    def n_trials(self) -> int:
        """Number of trials in the sweep."""
        return len(self.trials)

    @property
    def failure(self) -> str | None:
        """Why the sweep is incomplete (every trial errored, or an evaluation failed after training), or ``None``."""
        if self.trials.empty:
            return "the sweep ran no trials"
        if (self.trials["status"] == TrialStatus.ERRORED).all():
            return f"all {self.n_trials} trials errored (see the reason column of trials.csv and the trial logs)"
        reasons = self.trials.get(MTBenchColumn.REASON, pd.Series(dtype=object)).astype(str)
        failed = int(reasons.str.startswith(EVALUATION_FAILED).sum())
        if failed:
            return f"MT-Bench failed after training for {failed} trial(s) (mt_bench_reason in trials.csv); map written"
        if failed_evaluations(self.trials):
            return (
                f"AlpacaEval failed after training for {failed_evaluations(self.trials)} trial(s) "
                f"({AlpacaColumn.REASON} in trials.csv); map written"
            )
        return None

    def describe(self) -> str:
        """The closing summary printed by ``sweep/run.py``."""
        counts = self.trials["status"].value_counts().to_dict()
        lines = [
            format_cells_table(self.stability_map.cells),
            "",
            f"trials: {self.n_trials} ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))})",
            f"stability map: {self.stability_map.out_dir} (claims: {self.stability_map.out_dir / 'claims.md'})",
        ]
        if self.tracking_uri:
            uri = self.tracking_uri
            browse = "in its UI" if uri.startswith("http") else f"with `mlflow ui --backend-store-uri {uri}`"
            lines.append(f"MLflow: {uri} (parent run {self.parent_run_id}); browse {browse}")
            if self.mlflow_pending:
                lines.append(
                    f"WARNING: {self.mlflow_pending} MLflow calls could not be delivered; rerun with --resume once "
                    "the tracking server is back to log them (results are kept in Ray Tune's experiment state)"
                )
        return "\n".join(lines)
