"""AlpacaEval 2.0 on the trials a sweep's ``alpaca_eval.policy`` selects: outputs on trial workers' resources (Ray
tasks, all submitted at once), each judged here in the driver (so the judge's key never leaves it) as soon as it
exists (:mod:`sweep.scoring.tasks`), scores in the trial rows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sweep.columns import AlpacaColumn, MTBenchColumn
from sweep.config import SweepConfig
from sweep.scoring.tasks import (
    EVALUATION_FAILED,
    GENERATION_SECONDS,
    as_completed,
    cancel,
    failure_reason,
    no_policy_reason,
    submit_generations,
)
from sweep.trials.rows import trial_label
from trainers.protocol import TrialStatus

REFERENCE_GENERATOR = "reference_policy"
"""Generator name of the sweep's reference (initial) policy, the "vs SFT" baseline."""


def generate_alpaca_outputs(model: str, precision: str, cfg, out_dir: str, generator: str) -> str:
    """Ray task: answer the AlpacaEval instructions with a model (a trial's saved policy, or the reference model's
    spec) and ``cfg.generation_backend``; returns the model-outputs file."""
    from evaluation.alpaca_eval.pipeline import write_alpaca_outputs
    from trainers.dpo_config import PRECISION_DTYPES

    return str(write_alpaca_outputs(model, PRECISION_DTYPES[precision], cfg, Path(out_dir), generator))


def experiment_dir(storage_path: str, config: SweepConfig) -> Path:
    """Where the sweep keeps its shared AlpacaEval files (the reference policy's outputs)."""
    return Path(storage_path) / config.name / "alpaca_eval"


def _reference_outputs(config: SweepConfig, storage_path: str) -> Path | dict | None:
    """The reference policy's outputs: an earlier run's file (reused on resume), the pending Ray task that generates
    them (once per sweep), or None with a file/hub baseline."""
    from evaluation.alpaca_eval.pipeline import OUTPUTS_FILENAME

    cfg = config.alpaca_eval.eval
    if cfg.baseline is not None:
        return None
    out_dir = experiment_dir(storage_path, config) / "reference"
    if _covers(out_dir / OUTPUTS_FILENAME, cfg):
        return out_dir / OUTPUTS_FILENAME
    print(f"[sweep] AlpacaEval: outputs of the reference policy {config.train.model}")
    job = (config.train.model, config.train.precision, cfg, str(out_dir), REFERENCE_GENERATOR)
    return submit_generations(generate_alpaca_outputs, config.resources, {REFERENCE_GENERATOR: job})


def _covers(path: Path, cfg) -> bool:
    """Whether an earlier run's reference outputs answer every instruction now configured (a resumed sweep reuses
    them; a changed instruction set or limit regenerates them)."""
    from evaluation.alpaca_eval.data import load_model_outputs, match_baseline
    from evaluation.alpaca_eval.pipeline import load_alpaca_eval_data

    if not path.is_file():
        return False
    try:
        match_baseline(load_alpaca_eval_data(cfg).instructions, load_model_outputs(path), str(path))
    except ValueError:
        return False
    return True


def _selected(trials: pd.DataFrame, config: SweepConfig) -> pd.DataFrame:
    policy = config.alpaca_eval
    completed = trials[trials["status"].map(lambda status: TrialStatus(status).trained_to_end)]
    if policy.policy == "top_k":
        completed = completed.sort_values("eval_accuracy", ascending=False, kind="stable").head(policy.top_k)
    return completed if policy.policy != "none" else completed.iloc[0:0]


def selected_for(row: pd.Series) -> str:
    """The ``selected_for`` tag of a trial AlpacaEval scores: ``mt_bench,alpaca_eval`` if MT-Bench selected it too
    (its ``mt_bench_reason`` is then neither "not selected" nor the trial's status), so one tag does not hide the
    other."""
    reason = row.get(MTBenchColumn.REASON)
    by_mt_bench = MTBenchColumn.REASON in row and not (
        str(reason).startswith("not selected") or reason == row["status"]
    )
    return "mt_bench,alpaca_eval" if by_mt_bench else "alpaca_eval"


@dataclass
class PendingAlpacaEval:
    """AlpacaEval outputs being generated.

    Attributes:
        reference: The reference policy's outputs (a file, or its pending task), None with a file/hub baseline.
        pending: The trials' output tasks (object ref -> trial row index).
        out_dirs: Each selected trial's output directory (by row index).
    """

    reference: Path | dict | None = None
    pending: dict[Any, Any] = field(default_factory=dict)
    out_dirs: dict[Any, Path] = field(default_factory=dict)


def start_alpaca_eval(
    trials: pd.DataFrame, config: SweepConfig, storage_path: str, tracker
) -> tuple[pd.DataFrame, PendingAlpacaEval]:
    """Give every trial its AlpacaEval columns and submit the outputs of the reference policy and of every selected
    trial at once (after MT-Bench's, whose ``mt_bench_reason`` tells :func:`selected_for` what MT-Bench selected)."""
    from sweep.trials.trainable import trial_output_dir

    policy = config.alpaca_eval
    trials = trials.copy()
    for column in (AlpacaColumn.LC, AlpacaColumn.WIN_RATE, AlpacaColumn.STANDARD_ERROR):
        trials[column] = math.nan
    trials[AlpacaColumn.ANNOTATIONS] = None
    trained = trials["status"].map(lambda status: TrialStatus(status).trained_to_end)
    trials[AlpacaColumn.REASON] = [
        f"not selected (alpaca_eval.policy={policy.policy})" if done else status
        for status, done in zip(trials["status"], trained, strict=True)
    ]
    selected = _selected(trials, config)
    if selected.empty:
        return trials, PendingAlpacaEval()
    run, jobs = PendingAlpacaEval(), {}
    for index, row in selected.iterrows():
        trial_dir = trial_output_dir(storage_path, config.name, row["trial_id"])
        if not (trial_dir / "model").is_dir():
            trials.loc[index, AlpacaColumn.REASON] = no_policy_reason(config, trial_dir / "model")
            continue
        if tracker is not None:
            tracker.mark_selected(row["trial_id"], row["config"], selected_for(row))
        trials.loc[index, AlpacaColumn.REASON] = "pending"
        run.out_dirs[index] = trial_dir / "alpaca_eval"
        model_dir, out_dir = str(trial_dir / "model"), str(run.out_dirs[index])
        jobs[index] = (model_dir, config.train.precision, policy.eval, out_dir, row["trial_id"])
    if jobs:
        # The reference policy's outputs first: judging any trial waits for them.
        run.reference = _reference_outputs(config, storage_path)
        run.pending = submit_generations(generate_alpaca_outputs, config.resources, jobs)
    return trials, run


def _baseline_path(run: PendingAlpacaEval) -> Path | None:
    """The reference policy's outputs file, waiting for its generation if it is still running."""
    if not isinstance(run.reference, dict):
        return run.reference
    done = next(as_completed(run.reference))
    if done.error is not None:
        raise done.error
    return Path(done.value)


def finish_alpaca_eval(trials: pd.DataFrame, run: PendingAlpacaEval, config: SweepConfig, tracker) -> pd.DataFrame:
    """Judge each selected trial's outputs against the baseline as soon as they exist; a failure (generation,
    judge) is recorded on its trial as ``failed: ...`` and never loses the other results."""
    from evaluation.alpaca_eval.judge import build_pair_judge
    from evaluation.alpaca_eval.pipeline import load_alpaca_eval_data

    if not run.pending:
        return trials
    trials = trials.copy()
    cfg = config.alpaca_eval.eval
    try:
        baseline_path = _baseline_path(run)
        data, judge = load_alpaca_eval_data(cfg), build_pair_judge(cfg)
    except Exception as err:  # noqa: BLE001 - recorded on every selected trial; the map is still written
        cancel(run.pending)
        trials.loc[list(run.pending.values()), AlpacaColumn.REASON] = failure_reason(err)
        print(f"[sweep] AlpacaEval baseline or judge failed, recorded on the trials: {failure_reason(err)}")
        return trials
    try:
        for done in as_completed(run.pending):
            _judge_one(trials, done, run.out_dirs[done.key], baseline_path, cfg, data, judge, tracker)
    finally:
        judge.close()
    return trials


def _judge_one(trials: pd.DataFrame, done, out_dir: Path, baseline_path, cfg, data, judge, tracker) -> None:
    """Judge one trial's outputs (``done``: its finished generation) and record the scores or the failure."""
    from evaluation.alpaca_eval.pipeline import METRIC_PREFIX, score_outputs

    row = trials.loc[done.key]
    model_id = row["trial_id"]
    try:
        if done.error is not None:
            raise done.error
        print(f"[sweep] AlpacaEval {trial_label(row['config']['trial'])}: outputs in {done.seconds:.0f} s, judging")
        result = score_outputs(Path(done.value), cfg, out_dir, baseline_path=baseline_path, judge=judge, data=data)
    except Exception as err:  # noqa: BLE001 - any failure here is recorded on the trial, never loses the map
        trials.loc[done.key, AlpacaColumn.REASON] = failure_reason(err)
        print(f"[sweep] AlpacaEval {model_id} failed, recorded on the trial: {failure_reason(err)}")
        return
    _record(trials, done.key, result)
    print(f"[sweep] AlpacaEval {model_id}: LC {result.lc_win_rate:.1f} %, win rate {result.win_rate:.1f} %")
    if tracker is not None:
        metrics = {**result.as_metrics(), f"{METRIC_PREFIX}/{GENERATION_SECONDS}": done.seconds}
        tracker.log_trial_metrics(model_id, row["config"], metrics)
        paths = [result.outputs_path, result.annotations_path, out_dir / "alpaca_eval_scores.json"]
        tracker.log_trial_artifacts(model_id, row["config"], paths, "alpaca_eval")


def _record(trials: pd.DataFrame, index, result) -> None:
    """Write one trial's scores (and, if LC is undefined, why) into its row."""
    trials.loc[index, AlpacaColumn.LC] = result.lc_win_rate
    trials.loc[index, AlpacaColumn.WIN_RATE] = result.win_rate
    trials.loc[index, AlpacaColumn.STANDARD_ERROR] = result.metrics["standard_error"]
    trials.loc[index, AlpacaColumn.ANNOTATIONS] = str(result.annotations_path)
    trials.loc[index, AlpacaColumn.REASON] = None if math.isfinite(result.lc_win_rate) else "no usable judgment"


def failed_evaluations(trials: pd.DataFrame) -> int:
    """How many trials' AlpacaEval failed after training."""
    reasons = trials.get(AlpacaColumn.REASON, pd.Series(dtype=object)).astype(str)
    return int(reasons.str.startswith(EVALUATION_FAILED).sum())
