"""MT-Bench on the trials a sweep's ``mt_bench.policy`` selects: answers on trial workers' resources (Ray tasks, all
submitted at once), each trial judged here as soon as its answers exist (:mod:`sweep.scoring.tasks`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sweep.columns import MTBenchColumn
from sweep.config import SweepConfig
from sweep.scoring.tasks import (
    GENERATION_SECONDS,
    as_completed,
    cancel,
    failure_reason,
    no_policy_reason,
    submit_generations,
)
from sweep.trials.rows import trial_label
from trainers.protocol import TrialStatus


def generate_mt_bench_answers(model_dir: str, precision: str, cfg, out_dir: str, model_id: str) -> str:
    """Ray task: answer the MT-Bench questions with a trial's saved policy; returns the answers file.

    Runs on a trial's resources (the GPU a 7B policy needs) with ``cfg.generation_backend``; judging happens in the
    driver.
    """
    from evaluation.mt_bench.pipeline import write_mt_bench_answers
    from trainers.dpo_config import PRECISION_DTYPES

    return str(write_mt_bench_answers(model_dir, PRECISION_DTYPES[precision], cfg, Path(out_dir), model_id))


@dataclass
class PendingMTBench:
    """MT-Bench answers being generated: the Ray tasks (object ref -> trial row index) and each trial's output
    directory (by row index)."""

    pending: dict[Any, Any] = field(default_factory=dict)
    out_dirs: dict[Any, Path] = field(default_factory=dict)


def start_mt_bench(
    trials: pd.DataFrame, config: SweepConfig, storage_path: str, tracker
) -> tuple[pd.DataFrame, PendingMTBench]:
    """Give every trial its MT-Bench columns and submit the answer generation of every selected trial at once.

    Returns:
        The trials with ``mt_bench_score`` (NaN), ``mt_bench_judgments`` and ``mt_bench_reason`` (why a trial has no
        score; ``pending`` while it is being evaluated), and the pending generations for :func:`finish_mt_bench`.
    """
    from sweep.trials.trainable import trial_output_dir

    policy = config.mt_bench
    trials = trials.copy()
    trials[MTBenchColumn.SCORE] = math.nan
    trials[MTBenchColumn.JUDGMENTS] = None
    trained = trials["status"].map(lambda status: TrialStatus(status).trained_to_end)
    trials[MTBenchColumn.REASON] = [
        f"not selected (mt_bench.policy={policy.policy})" if done else status
        for status, done in zip(trials["status"], trained, strict=True)
    ]
    completed = trials[trained]
    if policy.policy == "none" or completed.empty:
        return trials, PendingMTBench()
    if policy.policy == "top_k":
        completed = completed.sort_values("eval_accuracy", ascending=False, kind="stable").head(policy.top_k)
    jobs, out_dirs = {}, {}
    for index, row in completed.iterrows():
        trial_dir = trial_output_dir(storage_path, config.name, row["trial_id"])
        if not (trial_dir / "model").is_dir():
            trials.loc[index, MTBenchColumn.REASON] = no_policy_reason(config, trial_dir / "model")
            print(f"[sweep] MT-Bench {row['trial_id']} skipped: {trials.loc[index, 'mt_bench_reason']}")
            continue
        if tracker is not None:
            tracker.mark_selected(row["trial_id"], row["config"])
        trials.loc[index, MTBenchColumn.REASON] = "pending"
        out_dirs[index] = trial_dir / "mt_bench"
        jobs[index] = (
            str(trial_dir / "model"),
            config.train.precision,
            policy.eval,
            str(out_dirs[index]),
            row["trial_id"],
        )
    if jobs:
        print(f"[sweep] MT-Bench: answers of {len(jobs)} trial(s) generated on free trial workers, judged as they come")
    return trials, PendingMTBench(submit_generations(generate_mt_bench_answers, config.resources, jobs), out_dirs)


def finish_mt_bench(trials: pd.DataFrame, run: PendingMTBench, config: SweepConfig, tracker) -> pd.DataFrame:
    """Judge each selected trial's answers as soon as they exist; a failure is recorded on its trial only.

    One judge (and one load of the questions) serves every trial.
    """
    from evaluation.judge_client import OpenAIJudge
    from evaluation.mt_bench.judge import build_judge
    from evaluation.mt_bench.pipeline import load_mt_bench_data

    if not run.pending:
        return trials
    trials = trials.copy()
    cfg = config.mt_bench.eval
    try:
        data, judge = load_mt_bench_data(cfg), build_judge(cfg)
    except Exception as err:  # noqa: BLE001 - recorded on every selected trial; the map is still written
        cancel(run.pending)
        trials.loc[list(run.pending.values()), MTBenchColumn.REASON] = failure_reason(err)
        print(f"[sweep] MT-Bench judge unavailable, recorded on the trials: {failure_reason(err)}")
        return trials
    try:
        for done in as_completed(run.pending):
            _judge_one(trials, done, run.out_dirs[done.key], cfg, data, judge, tracker)
    finally:
        if isinstance(judge, OpenAIJudge):
            judge.close()
    return trials


def _judge_one(trials: pd.DataFrame, done, out_dir: Path, cfg, data, judge, tracker) -> None:
    """Judge one trial's answers (``done``: its finished generation) and record the score or the failure."""
    from evaluation.mt_bench.pipeline import METRIC_PREFIX, score_answers

    row = trials.loc[done.key]
    model_id = row["trial_id"]
    label = trial_label(row["config"]["trial"])
    try:
        if done.error is not None:
            raise done.error
        print(f"[sweep] MT-Bench {label}: answers in {done.seconds:.0f} s, judging")
        result = score_answers(Path(done.value), cfg, out_dir, model_id, judge=judge, data=data)
    except Exception as err:  # noqa: BLE001 - any failure here is recorded on the trial, never loses the map
        trials.loc[done.key, MTBenchColumn.REASON] = failure_reason(err)
        print(f"[sweep] MT-Bench {model_id} failed, recorded on the trial: {failure_reason(err)}")
        return
    trials.loc[done.key, MTBenchColumn.SCORE] = result.overall
    trials.loc[done.key, MTBenchColumn.JUDGMENTS] = str(result.judgments_path)
    trials.loc[done.key, MTBenchColumn.REASON] = None if math.isfinite(result.overall) else "no valid judgment"
    print(f"[sweep] MT-Bench {model_id}: {result.overall:.2f} ({result.n_invalid} invalid judgments)")
    if tracker is not None:
        metrics = {**result.as_metrics(), f"{METRIC_PREFIX}/{GENERATION_SECONDS}": done.seconds}
        tracker.log_trial_metrics(model_id, row["config"], metrics)
        tracker.log_trial_artifacts(model_id, row["config"], [result.answers_path, result.judgments_path], "mt_bench")


def question_scores(trials: pd.DataFrame) -> pd.DataFrame:
    """Per-question MT-Bench scores of the scored trials (both turns averaged; invalid judgments, score -1, left
    out), read from their FastChat ``model_judgment`` files, for the claims' bootstrap over questions.

    Returns:
        Columns ``trial_id``, ``question_id``, ``score``; empty when no trial was scored.
    """
    rows = []
    for trial_id, path in zip(trials["trial_id"], trials.get(MTBenchColumn.JUDGMENTS, []), strict=False):
        if not isinstance(path, str) or not Path(path).is_file():
            continue
        for line in Path(path).read_text().splitlines():
            judgment = json.loads(line) if line.strip() else {}
            score = float(judgment.get("score", -1))
            if score >= 0:
                rows.append({"trial_id": trial_id, "question_id": judgment["question_id"], "score": score})
    frame = pd.DataFrame(rows, columns=["trial_id", "question_id", "score"])
    return frame.groupby(["trial_id", "question_id"], as_index=False)["score"].mean()
