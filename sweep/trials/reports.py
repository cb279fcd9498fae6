"""A trial's reports as Ray Tune wrote them to its ``result.json``, read back where Tune's own snapshot may be older.

Tune appends every report of a trial to ``<experiment>/<trial dir>/result.json`` as it receives it, while its trial
list (``experiment_state-*.json``) is copied to the experiment directory only now and then. After a driver was
killed, ``result.json`` is therefore the newer account: a trial whose final report (``ReportKey.FINAL``) is there had
finished, whatever the trial list says (:mod:`sweep.search.snapshot`); the status table shows it with the status
its reports give (:mod:`sweep.trials.progress`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainers.protocol import ReportKey

RESULT_FILE = "result.json"
"""Tune's file of a trial's reports, one JSON object a line, in its trial directory."""


def read_reports(trial_dir: str | Path) -> list[dict[str, Any]]:
    """Every report in a trial directory's :data:`RESULT_FILE`, in order (empty when there is none).

    A line cut short by a kill is the last one, and is left out.
    """
    path = Path(trial_dir) / RESULT_FILE
    if not path.is_file():
        return []
    reports = []
    for line in path.read_text().splitlines():
        try:
            reports.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return reports


def final_report(reports: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial's final report (the one carrying its verdict), if it sent one."""
    return next((report for report in reversed(reports) if report.get(ReportKey.FINAL.value) == 1), None)
