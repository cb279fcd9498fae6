"""AlpacaEval 2.0 on the trials a sweep's ``alpaca_eval.policy`` selects: outputs on a trial worker's resources (Ray
tasks), judged here in the driver (so the judge's key never leaves it), scores in the trial rows."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from sweep.alpaca_eval_config import AlpacaColumn
from sweep.config import SweepConfig
from sweep.ray_cluster import on_worker_resources
from sweep.trial_rows import trial_label
from trainers.protocol import TrialStatus

EVALUATION_FAILED = "failed:"
"""Prefix of an ``alpaca_reason`` whose evaluation failed after training (the sweep then exits incomplete)."""
REFERENCE_GENERATOR = "reference_policy"
"""Generator name of the sweep's reference (initial) policy, the "vs SFT" baseline."""


def generate_alpaca_outputs(model: str, precision: str, cfg, out_dir: str, generator: str) -> str:
    """Ray task: answer the AlpacaEval instructions with a model (a trial's saved policy, or the reference model's
    spec) and ``cfg.generation_backend``; returns the model-outputs file."""
    from evaluation.checkpoint_generation import write_alpaca_outputs
    from trainers.dpo_config import PRECISION_DTYPES

    return str(write_alpaca_outputs(model, PRECISION_DTYPES[precision], cfg, Path(out_dir), generator))


def experiment_dir(storage_path: str, config: SweepConfig) -> Path:
    """Where the sweep keeps its shared AlpacaEval files (the reference policy's outputs)."""
    return Path(storage_path) / config.name / "alpaca_eval"


def _reference_outputs(task, config: SweepConfig, storage_path: str) -> Path | None:
    """The reference policy's outputs (generated once per sweep, reused on resume); None with a file/hub baseline."""
    from evaluation.alpaca_eval import OUTPUTS_FILENAME

    cfg = config.alpaca_eval.eval
    if cfg.baseline is not None:
        return None
    out_dir = experiment_dir(storage_path, config) / "reference"
    if _covers(out_dir / OUTPUTS_FILENAME, cfg):
        return out_dir / OUTPUTS_FILENAME
    print(f"[sweep] AlpacaEval: outputs of the reference policy {config.train.model}")
    import ray

    return Path(
        ray.get(task.remote(config.train.model, config.train.precision, cfg, str(out_dir), REFERENCE_GENERATOR))
    )


def _covers(path: Path, cfg) -> bool:
    """Whether an earlier run's reference outputs answer every instruction now configured (a resumed sweep reuses
    them; a changed instruction set or limit regenerates them)."""
    from evaluation.alpaca_eval import load_alpaca_eval_data
    from evaluation.alpaca_eval_data import load_model_outputs, match_baseline

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
    reason = row.get("mt_bench_reason")
    by_mt_bench = "mt_bench_reason" in row and not (str(reason).startswith("not selected") or reason == row["status"])
    return "mt_bench,alpaca_eval" if by_mt_bench else "alpaca_eval"


def _failure(err: Exception) -> str:
    last_line = (str(err).strip().splitlines() or [""])[-1]
    return f"{EVALUATION_FAILED} {type(err).__name__}: {last_line}"[:500]


def score_alpaca_eval(trials: pd.DataFrame, config: SweepConfig, storage_path: str, tracker) -> pd.DataFrame:
    """AlpacaEval the trials the policy selects; every other trial gets the reason it has no score.

    A failure (generation, judge) is recorded on the trial as ``failed: ...`` and never loses the other results.
    """
    import ray

    from evaluation.alpaca_eval import score_outputs
    from sweep.ray_trial import trial_output_dir

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
        return trials
    task = on_worker_resources(generate_alpaca_outputs, config.resources)
    try:
        baseline_path = _reference_outputs(task, config, storage_path)
    except Exception as err:  # noqa: BLE001 - recorded on every selected trial; the map is still written
        trials.loc[selected.index, AlpacaColumn.REASON] = _failure(err)
        print(f"[sweep] AlpacaEval reference outputs failed, recorded on the trials: {_failure(err)}")
        return trials
    for index, row in selected.iterrows():
        trial_dir = trial_output_dir(storage_path, config.name, row["trial_id"])
        if not (trial_dir / "model").is_dir():
            trials.loc[index, AlpacaColumn.REASON] = "no saved policy (train.save_model=false)"
            continue
        if tracker is not None:
            tracker.mark_selected(row["trial_id"], row["config"], selected_for(row))
        out_dir, model_id = trial_dir / "alpaca_eval", row["trial_id"]
        print(f"[sweep] AlpacaEval: {trial_label(row['config']['trial'])}")
        try:
            outputs = ray.get(
                task.remote(str(trial_dir / "model"), config.train.precision, policy.eval, str(out_dir), model_id)
            )
            result = score_outputs(Path(outputs), policy.eval, out_dir, baseline_path=baseline_path)
        except Exception as err:  # noqa: BLE001 - any failure here is recorded on the trial, never loses the map
            trials.loc[index, AlpacaColumn.REASON] = _failure(err)
            print(f"[sweep] AlpacaEval {model_id} failed, recorded on the trial: {_failure(err)}")
            continue
        _record(trials, index, result)
        print(f"[sweep] AlpacaEval {model_id}: LC {result.lc_win_rate:.1f} %, win rate {result.win_rate:.1f} %")
        if tracker is not None:
            tracker.log_trial_metrics(model_id, row["config"], result.as_metrics())
            paths = [result.outputs_path, result.annotations_path, out_dir / "alpaca_eval_scores.json"]
            tracker.log_trial_artifacts(model_id, row["config"], paths, "alpaca_eval")
    return trials


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
