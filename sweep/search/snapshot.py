"""Make the Tune snapshot of a killed grid sweep consistent before it is resumed.

Tune saves its trial list (``experiment_state-<session>.json``) and its grid searcher
(``basic-variant-state-<session>.json``, a ``BasicVariantGenerator``) into a staging directory and copies both to the
experiment directory in the background. A driver killed during that copy leaves one of the two newer than the other:

* the searcher ahead of the trial list: it counts trials that the list lacks as running; with
  ``max_concurrent_trials`` of them it never proposes another trial, and the resumed sweep waits forever;
* the trial list ahead of the searcher: it proposes grid entries again under ids the list already holds.

:func:`align_grid_searcher` sets the searcher to the trial list, which is what Tune restores: the next trial it proposes
is the first grid entry the list lacks, and only the list's unfinished trials count as running. A trial that finished
after the list was saved is unknown to the resumed sweep and runs again (its earlier MLflow run is superseded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TRIAL_LIST_GLOB = "experiment_state-*.json"
GRID_SEARCHER_GLOB = "basic-variant-state-*.json"
FINISHED = frozenset({"TERMINATED", "ERROR"})
"""Tune trial statuses that a grid searcher no longer counts as running."""


@dataclass(frozen=True)
class Alignment:
    """What :func:`align_grid_searcher` changed: how many trials the searcher had proposed (and which it counted
    as running), and how many the trial list holds."""

    proposed_before: int
    proposed_after: int
    running_before: frozenset[str]

    def describe(self) -> str:
        """One line for the sweep's output."""
        running = ", ".join(sorted(self.running_before)) or "none"
        return (
            f"Tune's snapshot was cut by the kill (its searcher had proposed {self.proposed_before} trials with "
            f"{running} running, its trial list holds {self.proposed_after}); the grid resumes after the "
            f"{self.proposed_after} listed trials"
        )


def _newest(experiment_dir: Path, pattern: str) -> Path | None:
    # Tune picks the newest file by name (its session timestamp): ray.tune.utils.util._load_newest_checkpoint.
    paths = sorted(experiment_dir.glob(pattern))
    return paths[-1] if paths else None


def listed_trials(experiment_dir: Path) -> dict[str, str]:
    """``trial_id -> Tune status`` of the trials in the newest trial list of ``experiment_dir`` (what a resume
    restores; empty without one)."""
    trial_list = _newest(experiment_dir, TRIAL_LIST_GLOB)
    if trial_list is None:
        return {}
    states = [json.loads(entry[0]) for entry in json.loads(trial_list.read_text())["trial_data"]]
    return {state["trial_id"]: state["status"] for state in states}


def align_grid_searcher(experiment_dir: Path) -> Alignment | None:
    """Set the grid searcher saved in ``experiment_dir`` to the trial list saved beside it.

    Args:
        experiment_dir: A Tune experiment directory (``<storage_path>/<name>``) about to be restored.

    Returns:
        What changed, or ``None`` when the two agreed already (or the directory holds no grid searcher of one
        eager grid, which is all a grid sweep uses).
    """
    import ray.cloudpickle as cloudpickle
    from ray.tune.search.basic_variant import _VariantIterator
    from ray.tune.search.variant_generator import generate_variants
    from ray.tune.utils.util import _atomic_save

    statuses, searcher_file = listed_trials(experiment_dir), _newest(experiment_dir, GRID_SEARCHER_GLOB)
    if not statuses or searcher_file is None:
        return None
    state = cloudpickle.loads(searcher_file.read_bytes())
    if len(state["_iterators"]) != 1 or state["_iterators"][0].lazy_eval:
        return None
    grid = state["_iterators"][0]
    listed = [f"{state['_uuid_prefix']}{index:05d}" for index in range(len(statuses))]
    if set(listed) != set(statuses):  # ids the grid searcher did not give: not a snapshot of this searcher
        return None
    running = frozenset(trial_id for trial_id, status in statuses.items() if status not in FINISHED)
    if grid.counter == len(listed) and state["_live_trials"] == running:
        return None
    alignment = Alignment(grid.counter, len(listed), frozenset(state["_live_trials"]))
    # The grid is the same list of variants every time (no random sampling): the next one is the list's length.
    variants = list(
        generate_variants(
            grid.unresolved_spec, constant_grid_search=grid.constant_grid_search, random_state=grid.random_state
        )
    )
    grid.variants = _VariantIterator(variants[len(listed) :], lazy_eval=False)
    grid.counter, grid.num_samples_left = len(listed), 0
    state["_live_trials"], state["_finished"] = set(running), False
    _atomic_save(state, str(experiment_dir), searcher_file.name, f"tmp-{searcher_file.name}")
    return alignment
