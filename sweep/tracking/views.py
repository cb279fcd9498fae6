"""What a user sees first in MLflow's UI: the experiment's description, a saved view per sweep and its URL.

MLflow 3's UI opens an experiment in its GenAI view (traces, judges) unless told otherwise; the model-training view
is picked per page by the URL's ``workflowType=machine_learning`` (``WorkflowTypeProvider`` in MLflow 3.17's
``mlflow/server/js``; it wins over the experiment's ``mlflow.experimentKind`` tag and the stored toggle). Its runs
page reads a saved view from the experiment tag ``mlflow.sharedViewState.<id>`` named by the URL's
``viewStateShareKey=<id>`` (``useSharedExperimentViewState``): a JSON envelope ``{name, createdAt, updatedAt, state}``
whose ``state`` holds the runs page's search facets and UI state (``EXPERIMENT_PAGE_QUERY_PARAM_KEYS``,
``EXPERIMENT_PAGE_UI_STATE_FIELDS``). The UI lists such views in its "Views" menu.

Each sweep gets one saved view, "``<sweep>``: stability": its current trial runs only, grouped by verdict, the columns
that say where a loss is stable, and full-width parallel-coordinates charts of loss, beta_kl, beta_mix, held-out
accuracy and failure. :func:`experiment_url` is the link the sweep prints. Checked in a browser against MLflow 3.17
(``tests/sweep/test_mlflow_ui.py``).
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode, urlparse

from sweep.tracking.runs import ROLE_TAG, SUPERSEDED_TAG, SWEEP_TAG
from trainers.protocol import Failure

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
"""Experiment-tag prefix of the runs page's saved views (``EXPERIMENT_PAGE_VIEW_STATE_SHARE_TAG_PREFIX``)."""
VERDICT_TAG = "verdict"
"""The tag holding a trial's :class:`~trainers.protocol.TrialStatus` (what the saved view groups by)."""
LOCAL_UI = "http://127.0.0.1:5000"
"""Where ``mlflow ui`` serves a local store by default."""

FAILED_METRIC = f"final/{Failure.FAILED.value}"
PARALLEL_CHARTS = (
    (("loss", "beta_kl", "beta_mix"), (FAILED_METRIC,)),
    (("loss", "beta_kl"), ("final/eval_accuracy", FAILED_METRIC)),
)
"""(param axes, metric axes) of the two stability charts; the last axis colours the lines. MLflow's parallel-coordinates
chart leaves out every run that lacks one of its axes: the first, where the LRML family fails over beta_kl x beta_mix,
has every such trial with a verdict; the second adds the losses without a ``beta_mix`` (DPO, IPO, hinge) and the
held-out accuracy, which a trial that diverged before its first evaluation does not have."""
TABLE_COLUMNS = (
    ("params", "loss"),
    ("params", "beta_kl"),
    ("params", "beta_mix"),
    ("params", "seed"),
    ("tags", VERDICT_TAG),
    ("metrics", FAILED_METRIC),
    ("metrics", f"final/{Failure.UNSTABLE.value}"),
    ("metrics", "final/eval_accuracy"),
    ("metrics", "final/chosen_logps_drift"),
)
"""The runs table's columns, in this order after the run's name."""
RUN_NAME_COLUMN = "attributes.`Run Name`"


def view_id(sweep_name: str) -> str:
    """The saved view's id (the URL's ``viewStateShareKey``) of a sweep: sweep names are URL-safe identifiers."""
    return f"dlrml-stability-{sweep_name}"


def view_state(sweep_name: str) -> dict[str, Any]:
    """The runs page's state of a sweep's stability view (search facets and UI state, as the UI stores them)."""
    section = f"{view_id(sweep_name)}-section"
    columns = [f"{kind}.`{key}`" for kind, key in TABLE_COLUMNS]
    return {
        # Search facets: this sweep's current trial runs (a superseded attempt is kept, but not shown).
        "searchFilter": f"tags.`{SWEEP_TAG}` = '{sweep_name}' and tags.`{ROLE_TAG}` = 'trial' "
        f"and tags.`{SUPERSEDED_TAG}` = 'false'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        # UI state: columns, grouping (which also lifts the trials out from under their collapsed parent run).
        "selectedColumns": columns,
        "columnOrder": [RUN_NAME_COLUMN, *columns],
        "columnWidths": {RUN_NAME_COLUMN: 260},  # the whole trial name, e.g. "dlrml bkl=0.05 bmix=0.2 seed=0"
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": VERDICT_TAG}]},
        "groupsExpanded": {},
        "useGroupedValuesInCharts": False,  # charts show every trial, not one line per verdict
        "runsHiddenMode": "SHOW_ALL",  # not only the first 10 runs
        "hideEmptyCharts": True,
        "isAccordionReordered": True,  # keeps the stability section above the charts the UI adds per metric
        "compareRunSections": [
            # One full-width chart per row, taller than the UI's default 360 px: the parallel axes need the room.
            {"uuid": section, "name": "Stability", "display": True, "isReordered": True}
            | {"columns": 1, "cardHeight": 480}
        ],
        "compareRunCharts": [
            {
                "uuid": f"{view_id(sweep_name)}-parallel-{index}",
                "type": "PARALLEL",
                "metricSectionId": section,
                "runsCountToCompare": 1000,
                "deleted": False,
                "isGenerated": False,
                "selectedParams": list(params),
                "selectedMetrics": list(metrics),
                "showAllRuns": True,
            }
            for index, (params, metrics) in enumerate(PARALLEL_CHARTS)
        ],
        "viewMaximized": False,
        "runListHidden": False,
    }


def view_envelope(sweep_name: str) -> str:
    """The experiment-tag value of a sweep's saved view (the UI's saved-view envelope, ``state`` as JSON text)."""
    now = int(time.time() * 1000)
    state = json.dumps(view_state(sweep_name))
    return json.dumps({"name": f"{sweep_name}: stability", "createdAt": now, "updatedAt": now, "state": state})


def ui_base(tracking_uri: str) -> str:
    """Where the UI of a tracking URI is served: the server itself, or ``mlflow ui``'s default for a local store."""
    scheme = urlparse(tracking_uri).scheme
    return tracking_uri.rstrip("/") if scheme in ("http", "https") else LOCAL_UI


def experiment_url(tracking_uri: str, experiment_id: str, sweep_name: str | None = None, chart: bool = False) -> str:
    """The experiment's runs page in MLflow's model-training view, on a sweep's saved view if named.

    Args:
        tracking_uri: The tracking URI the sweep logged to.
        experiment_id: The experiment's id.
        sweep_name: The sweep whose saved view to open, or ``None`` for the plain runs table.
        chart: Open the chart view (the stability chart on top) instead of the table.

    Returns:
        e.g. ``http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=...``
    """
    query = {"workflowType": "machine_learning"}
    if sweep_name is not None:
        query["viewStateShareKey"] = view_id(sweep_name)
    if chart:
        query["compareRunsMode"] = "CHART"
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{urlencode(query)}"
