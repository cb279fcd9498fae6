"""Make the Tune snapshot of a killed sweep consistent before it is resumed (:func:`align_snapshot`).

Tune saves its trial list (``experiment_state-<session>.json``) and its searcher's state into a staging directory and
copies them to the experiment directory in the background, now and then; each report of a trial reaches the trial's
``result.json`` as it arrives. A driver killed between two copies, or during one, leaves them disagreeing:

* a trial that finished after the list's last copy is listed running: :func:`restore_finished_trials` marks it
  finished from the final report in its ``result.json``, so the resume keeps it instead of training it again;
* the searcher ahead of the trial list: it counts trials that the list lacks as running; with
  ``max_concurrent_trials`` of them it never proposes another trial, and the resumed sweep waits forever;
* the trial list ahead of the searcher: it proposes again what the list already holds.

The searcher is set to the trial list, which is what Tune restores. The grid searcher
(``basic-variant-state-<session>.json``, a ``BasicVariantGenerator``; :func:`align_grid_searcher`): the next trial it
proposes is the first grid entry the list lacks, and only the list's unfinished trials count as running. The
adaptive searcher (``searcher-state-<session>.pkl``, its planner, beside ``search_gen_state-<session>.json``, Tune's
trial counter and concurrency limiter; :func:`align_adaptive_searcher`): a trial it proposed that the list lacks is
withdrawn and proposed again, a listed trial it does not know is adopted, a listed finished trial it waits on is
recorded from its ``result.json``, and the limiter counts the list's unfinished trials. A trial proposed after the
list's last copy is unknown to the resumed sweep and runs again (its earlier MLflow run is superseded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.config import SweepConfig
from sweep.trials.reports import final_report, read_reports

TRIAL_LIST_GLOB = "experiment_state-*.json"
GRID_SEARCHER_GLOB = "basic-variant-state-*.json"
ADAPTIVE_SEARCHER_GLOB = "searcher-state-*.pkl"
"""The adaptive searcher's own state (``Searcher.CKPT_FILE_TMPL``: :meth:`AdaptiveSearcher.save`)."""
SEARCH_GENERATOR_GLOB = "search_gen_state-*.json"
"""Tune's wrappers of a searcher: its trial counter and the ``ConcurrencyLimiter`` (``SearchGenerator``)."""
LIMITER_KEY = "name:ConcurrencyLimiter"
FINISHED = frozenset({"TERMINATED", "ERROR"})
"""Tune trial statuses that a searcher no longer counts as running."""


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


def restore_finished_trials(experiment_dir: Path) -> list[str]:
    """Mark every trial that the newest trial list holds as unfinished but whose ``result.json`` holds its final
    report as finished (``TERMINATED``, that report its last result), so the resume keeps it instead of training it
    again.

    Tune copies its trial list to the experiment directory only now and then, while each report reaches the trial's
    ``result.json`` as it arrives: a trial that finished after the list's last copy is listed running.

    Returns:
        The ids of the trials marked finished.
    """
    from ray.tune.experiment import Trial

    trial_list = _newest(experiment_dir, TRIAL_LIST_GLOB)
    if trial_list is None:
        return []
    saved = json.loads(trial_list.read_text())
    restored = []
    for entry in saved["trial_data"]:
        state, metadata = json.loads(entry[0]), json.loads(entry[1])
        if state["status"] in FINISHED or not state.get("relative_logdir"):
            continue
        final = final_report(read_reports(experiment_dir / state["relative_logdir"]))
        if final is None:
            continue
        state["status"] = Trial.TERMINATED
        metadata["last_result"] = final
        metadata["last_result_time"] = float(final.get("timestamp") or metadata.get("last_result_time") or 0)
        entry[0], entry[1] = json.dumps(state, indent=2), json.dumps(metadata, indent=2)
        restored.append(state["trial_id"])
    if restored:
        staged = trial_list.with_name(f".tmp-{trial_list.name}")
        staged.write_text(json.dumps(saved))
        staged.replace(trial_list)  # atomic: a second kill leaves the old list or the new one
    return restored


def _listed(experiment_dir: Path) -> dict[str, dict[str, Any]]:
    """``trial_id -> Tune's saved state`` (``status``, ``config``, ``relative_logdir``, ...) of the trials in the newest
    trial list of ``experiment_dir`` (what a resume restores; empty without one)."""
    trial_list = _newest(experiment_dir, TRIAL_LIST_GLOB)
    if trial_list is None:
        return {}
    states = [json.loads(entry[0]) for entry in json.loads(trial_list.read_text())["trial_data"]]
    return {state["trial_id"]: state for state in states}


def listed_trials(experiment_dir: Path) -> dict[str, str]:
    """``trial_id -> Tune status`` of the trials in the newest trial list of ``experiment_dir`` (what a resume
    restores; empty without one)."""
    return {trial_id: state["status"] for trial_id, state in _listed(experiment_dir).items()}


def align_snapshot(experiment_dir: Path, config: SweepConfig) -> list[str]:
    """Before a resume: finished trials kept (:func:`restore_finished_trials`), then the sweep's searcher set to the
    trial list (:func:`align_grid_searcher` or :func:`align_adaptive_searcher`).

    Returns:
        One line for the sweep's output per change (none when the snapshot was consistent).
    """
    lines = []
    if finished := restore_finished_trials(experiment_dir):
        lines.append(
            f"{len(finished)} trial(s) had finished before the kill though Tune's snapshot listed them unfinished "
            f"(their final report is in result.json): kept, not trained again ({', '.join(finished)})"
        )
    if config.search == "grid" and (alignment := align_grid_searcher(experiment_dir)):
        lines.append(alignment.describe())
    if config.search == "adaptive" and (changed := align_adaptive_searcher(experiment_dir, config)):
        lines.append(changed)
    return lines


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


def align_adaptive_searcher(experiment_dir: Path, config: SweepConfig) -> str | None:
    """Set the adaptive searcher's saved state, and Tune's trial counter and concurrency limiter, to the trial list
    saved beside them (see the module docstring).

    Args:
        experiment_dir: A Tune experiment directory (``<storage_path>/<name>``) about to be restored.
        config: The sweep's config (its grid, adaptive settings and verdict rules, as the searcher was built).

    Returns:
        What changed, in one line, or ``None`` when they agreed already (or a file is missing).
    """
    import ray.cloudpickle as cloudpickle
    from ray.tune.utils.util import _atomic_save

    from sweep.search.lattice import spec_of
    from sweep.search.searcher import AdaptiveSearcher, trial_result_status

    listed = _listed(experiment_dir)
    searcher_file = _newest(experiment_dir, ADAPTIVE_SEARCHER_GLOB)
    generator_file = _newest(experiment_dir, SEARCH_GENERATOR_GLOB)
    if not listed or searcher_file is None or generator_file is None:
        return None
    searcher = AdaptiveSearcher(config)
    searcher.restore(str(searcher_file))
    state = searcher.get_state()
    planner, waiting = state["planner"], dict(state["trials"])  # trial id -> the spec the searcher waits on
    changes: list[str] = []
    for trial_id in [trial_id for trial_id in waiting if trial_id not in listed]:
        planner.withdraw(waiting.pop(trial_id))
        changes.append(f"{trial_id} proposed again")
    for trial_id, trial in listed.items():
        spec = spec_of(trial["config"]["trial"])
        if trial_id not in waiting and not planner.proposed(spec):
            planner.adopt(spec)
            waiting[trial_id] = spec
            changes.append(f"{trial_id} adopted")
        if trial_id in waiting and trial["status"] in FINISHED:
            reports = read_reports(experiment_dir / trial["relative_logdir"])
            errored = trial["status"] == "ERROR"
            status = trial_result_status(reports, None, errored, config.train.divergence, config.train.verdicts)
            planner.record(waiting.pop(trial_id), status)
            changes.append(f"{trial_id} recorded {status.value}")
    generator = cloudpickle.loads(generator_file.read_bytes())
    limiter = generator.get(LIMITER_KEY)
    running = {trial_id for trial_id, trial in listed.items() if trial["status"] not in FINISHED}
    limiter_agrees = limiter is None or limiter["live_trials"] == running
    if not changes and limiter_agrees and generator["counter"] == len(listed):
        return None
    searcher.set_state({**state, "trials": waiting})
    searcher.save(str(searcher_file.with_name(f".tmp-{searcher_file.name}")))
    searcher_file.with_name(f".tmp-{searcher_file.name}").replace(searcher_file)
    generator["counter"], generator["finished"] = len(listed), False
    if limiter is not None:
        limiter["live_trials"], limiter["num_unfinished_live_trials"] = set(running), len(running)
    _atomic_save(generator, str(experiment_dir), generator_file.name, f"tmp-{generator_file.name}")
    return (
        f"Tune's snapshot was cut by the kill; the adaptive searcher is set to its trial list of {len(listed)} trials "
        f"({', '.join(changes) or 'its running trials counted again'})"
    )
