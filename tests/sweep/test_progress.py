"""What a user watches (one line per trial event, a compact status table, from recorded results) and where a trial's
process runs, without Ray."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

from sweep.config import ResourcesConfig
from sweep.trials.progress import TABLE_COLUMNS, TrialProgress, status_table
from sweep.trials.trainable import trains_in_process, trial_resources
from trainers.collapse import DivergenceConfig
from trainers.protocol import HELD_OUT_ACCURACY, ReportKey, ReportType
from trainers.verdicts import VerdictConfig

N_PAIRS = 16
"""Held-out pairs: learning needs an accuracy above 0.5 + 2 * sqrt(0.25 / 16) = 0.75."""


def _trial(trial_id: str, name: str = "dlrml", error: str | None = None) -> SimpleNamespace:
    loss = {"name": name, "beta_kl": 0.05, "beta_mix": 0.2 if name == "dlrml" else None}
    return SimpleNamespace(
        trial_id=trial_id,
        config={"trial": {"loss": loss, "seed": 0}},
        get_pickled_error=lambda: RuntimeError(error) if error else None,
        get_error=lambda: None,
    )


def _train(step: int, loss: float, grad_norm: float = 1.5) -> dict:
    return {ReportKey.STEP: step, ReportKey.REPORT_TYPE: ReportType.TRAIN, "loss": loss, "grad_norm": grad_norm}


def _eval(step: int, accuracy: float) -> dict:
    return {ReportKey.STEP: step, ReportKey.REPORT_TYPE: ReportType.EVAL, HELD_OUT_ACCURACY: accuracy}


def _final(step: int, accuracy: float) -> dict:
    return {
        ReportKey.STEP: step,
        ReportKey.REPORT_TYPE: ReportType.FINAL,
        ReportKey.FINAL: 1,
        ReportKey.EVAL_PAIRS: N_PAIRS,
        "loss": 0.5,
        HELD_OUT_ACCURACY: accuracy,
    }


def _learned(*accuracies: float) -> list[dict]:
    """A training step and a held-out evaluation per step (enough of them for a settled verdict), then the end."""
    reports = [
        report for step, acc in enumerate(accuracies, start=1) for report in (_train(step, 0.6), _eval(step, acc))
    ]
    return [*reports, _final(len(accuracies), accuracies[-1])]


def _progress(lines: list[str], table_every_s: float = 0.0) -> TrialProgress:
    return TrialProgress(
        DivergenceConfig(grace_steps=1), VerdictConfig(), table_every_s=table_every_s, echo=lines.append
    )


def test_one_line_per_event_with_the_verdict_and_its_evidence():
    lines: list[str] = []
    progress, trial = _progress(lines), _trial("t0")
    progress.on_trial_start(0, [trial], trial)
    for result in _learned(0.8125, 0.875, 0.875):
        progress.on_trial_result(0, [trial], trial, {str(k): v for k, v in result.items()})
    progress.on_trial_complete(0, [trial], trial)
    assert lines == [
        "[trial] dlrml bkl=0.05 bmix=0.2 seed=0: started (t0)",
        "[trial] dlrml bkl=0.05 bmix=0.2 seed=0: step 1, held-out accuracy 0.812",
        "[trial] dlrml bkl=0.05 bmix=0.2 seed=0: step 2, held-out accuracy 0.875",
        "[trial] dlrml bkl=0.05 bmix=0.2 seed=0: step 3, held-out accuracy 0.875",
        "[trial] dlrml bkl=0.05 bmix=0.2 seed=0: stable at step 3",
    ]


def test_a_stalled_trial_says_why_and_an_errored_one_says_what_failed():
    lines: list[str] = []
    progress = _progress(lines)
    stalled, failed = _trial("t1", "dpo"), _trial("t2", "dpo", error="CUDA out of memory")
    for trial in (stalled, failed):
        progress.on_trial_start(0, [stalled, failed], trial)
    for result in _learned(0.5, 0.5, 0.5):
        progress.on_trial_result(0, [stalled], stalled, {str(k): v for k, v in result.items()})
    progress.on_trial_result(0, [failed], failed, {str(k): v for k, v in _train(1, 0.7).items()})
    progress.on_trial_complete(0, [stalled, failed], stalled)
    progress.on_trial_error(0, [stalled, failed], failed)
    assert lines[-2].startswith("[trial] dpo bkl=0.05 seed=0: stalled at step 3 (no_learning: ")
    assert (
        lines[-1].startswith("[trial] dpo bkl=0.05 seed=0: errored at step 1 (") and "CUDA out of memory" in lines[-1]
    )


def test_a_restarted_trial_is_judged_on_its_new_attempt_only():
    """An attempt that diverged before its process died must not make the retry (which learned) look diverged."""
    lines: list[str] = []
    progress, trial = _progress(lines), _trial("t3")
    progress.on_trial_start(0, [trial], trial)
    progress.on_trial_result(0, [trial], trial, {str(k): v for k, v in _train(1, math.nan).items()})
    progress.on_trial_start(0, [trial], trial)
    for result in _learned(0.875, 0.875, 0.875):
        progress.on_trial_result(0, [trial], trial, {str(k): v for k, v in result.items()})
    progress.on_trial_complete(0, [trial], trial)
    assert lines[-1] == "[trial] dlrml bkl=0.05 bmix=0.2 seed=0: stable at step 3"


def test_status_table_shows_what_a_user_watches():
    lines: list[str] = []
    progress = _progress(lines, table_every_s=1e-9)
    running, pending = _trial("t4"), _trial("t5", "dpo")
    progress.on_trial_start(0, [running, pending], running)
    for result in (_train(1, 0.6931, 2.25), _eval(1, 0.625), _train(2, 0.61234567, 3.5)):
        progress.on_trial_result(0, [running], running, {str(k): v for k, v in result.items()})
    progress.on_step_end(0, [running, pending])
    header, table = lines[-1].split("\n", 1)
    assert header == "[sweep] trials: 1 running, 1 pending"
    rows = [line.split() for line in table.splitlines()]
    assert rows[0] == ["trial", "status", "step", "loss", "grad_norm", "held-out", "acc", "tok/s"]
    assert rows[1][-6:] == ["running", "2", "0.6123", "3.5", "0.625", "-"]
    assert rows[2][-6:] == ["pending", "-", "-", "-", "-", "-"]


def test_status_table_shows_trials_a_resume_restored_as_finished_with_their_status(tmp_path):
    """A resumed sweep never starts a trial that had finished before the kill (Tune restores it ``TERMINATED``): the
    table shows the status its reports in result.json give, and its numbers, not ``pending``; an errored one says
    errored."""
    lines: list[str] = []
    progress = _progress(lines, table_every_s=1e-9)
    reports = (*_learned(0.875, 0.875)[:-1], _train(3, 0.4, 2.5), _eval(3, 0.875), _final(3, 0.875))
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "result.json").write_text("".join(json.dumps(r) + "\n" for r in reports))
    done = _trial("t6")
    done.status, done.path, done.last_result = "TERMINATED", str(tmp_path / "done"), reports[-1]
    failed = _trial("t7", "dpo", error="worker died")
    failed.status, failed.path, failed.last_result = "ERROR", str(tmp_path / "never-reported"), {}
    waiting = _trial("t8", "dpo")
    waiting.status = "PENDING"
    progress.on_step_end(0, [done, failed, waiting])
    header, table = lines[-1].split("\n", 1)
    assert header == "[sweep] trials: 1 stable, 1 errored, 1 pending"
    rows = [line.split() for line in table.splitlines()]
    assert rows[1][-6:] == ["stable", "3", "0.4", "2.5", "0.875", "-"]
    assert rows[2][-6:] == ["errored", "-", "-", "-", "-", "-"] and rows[3][-6:] == ["pending", "-", "-", "-", "-", "-"]


def test_status_table_aligns_columns():
    table = status_table([{"trial": "a", "status": "stable", "step": 10, "loss": math.nan}]).splitlines()
    assert len(table) == 2 and len(TABLE_COLUMNS) == 8
    assert table[0].index("status") == table[1].index("stable") and "nan" in table[1]


def test_status_table_shows_tokens_per_second_and_mfu_only_where_a_trial_reports_it():
    """Tokens/s is written short (``12.3k``); the MFU column (a percentage) appears only once some trial reports an
    MFU (the accelerator's peak is known), so a CPU sweep's table stays as narrow as before."""
    lines: list[str] = []
    progress = _progress(lines, table_every_s=1e-9)
    gpu, cpu = _trial("t9"), _trial("t10", "dpo")
    for trial in (gpu, cpu):
        progress.on_trial_start(0, [gpu, cpu], trial)
    on_gpu = {**_train(1, 0.69), "perf/tokens_per_second": 12345.0, "perf/mfu": 0.4218}
    on_cpu = {**_train(1, 0.69), "perf/tokens_per_second": 850.4}
    progress.on_trial_result(0, [gpu, cpu], cpu, {str(k): v for k, v in on_cpu.items()})
    progress.on_step_end(0, [gpu, cpu])
    rows = [line.split() for line in lines[-1].split("\n", 1)[1].splitlines()]
    assert rows[0][-2:] == ["acc", "tok/s"] and rows[2][-2:] == ["-", "850"]
    progress.on_trial_result(0, [gpu, cpu], gpu, {str(k): v for k, v in on_gpu.items()})
    progress.on_step_end(0, [gpu, cpu])
    rows = [line.split() for line in lines[-1].split("\n", 1)[1].splitlines()]
    assert rows[0][-3:] == ["acc", "tok/s", "mfu"]
    assert rows[1][-3:] == ["-", "12.3k", "42.2%"] and rows[2][-3:] == ["-", "850", "-"]


def test_a_one_worker_trial_holds_its_worker_resources_in_its_own_process():
    """One worker without DeepSpeed trains in the Tune trial's process, which must reserve the worker's CPUs and
    GPUs; otherwise the Tune side only waits on a TorchTrainer whose workers hold them (and reserves no CPU)."""
    one = ResourcesConfig(num_workers=1, cpus_per_worker=2)
    assert trains_in_process(1, None) and trial_resources(one, None) == {"cpu": 2}
    gpu = ResourcesConfig(num_workers=1, cpus_per_worker=4, use_gpu=True, gpus_per_worker=1)
    assert trial_resources(gpu, None) == {"cpu": 4, "gpu": 1}
    for resources, deepspeed in ((one, "zero3"), (ResourcesConfig(num_workers=2, cpus_per_worker=1), None)):
        assert not trains_in_process(resources.num_workers, deepspeed)
        assert trial_resources(resources, deepspeed)["cpu"] == 0
