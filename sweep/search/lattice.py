"""Adaptive stability mapping: which trials to run so that a fraction of the grid's compute maps its boundary.

Pure Python (no Ray): the planner is driven by recorded verdicts, so it is unit-tested on them and the Tune wrapper
(:mod:`sweep.search.searcher`) only translates. Per (loss, form) the configured ``beta_kl x beta_mix`` values form
a :class:`Lattice`; the planner

1. measures a coarse design: ``coarse_points`` values per axis, evenly spaced in log-beta and snapped to the
   lattice (3: the corners, edge midpoints and centre), which cuts the lattice into boxes;
2. adds a seed (in ``grid.seeds`` order, up to ``max_seeds_per_cell``) to a cell whose seeds disagree or none of
   whose trials gave a verdict (pruned, errored), before that cell counts for step 3;
3. splits a box (quadtree bisection on the lattice, at the log-midpoint) once its corners are resolved and the
   verdicts recorded on its perimeter disagree -- only along an axis where an edge running along it disagrees (a
   box whose edges along beta_mix each agree is inferred along beta_mix, so it is bisected along beta_kl only); a
   box whose perimeter agrees is left to :func:`sweep.search.infer.infer_cells`, and a box one lattice step
   wide cannot be split (the resolution);
4. when nothing else is left, adds a seed to a cell on the boundary (next to a recorded cell of another verdict,
   one lattice step along an axis) whose seeds are all stable and whose failure-rate Wilson interval
   (:func:`sweep.confidence.wilson_interval`) is wider than ``interval_width``: one failing seed makes a cell fail
   (:func:`sweep.stability.cells.cell_verdict`), so only an all-stable cell can change verdict with more seeds;
5. stops when nothing is left to propose or when ``max_trials`` trials were proposed.

Proposals are deterministic: the same recorded results in the same order give the same proposals.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sweep.confidence import wilson_interval
from sweep.config import AdaptiveConfig, GridConfig
from sweep.stability.cells import UNDETERMINED, UNSETTLED, cell_verdict
from trainers.config import LossConfig
from trainers.protocol import TrialStatus

CellKey = tuple[str, str, float, float | None]
"""A cell: ``(loss, form, beta_kl, beta_mix)`` (``beta_mix`` is ``None`` for losses without it)."""


@dataclass(frozen=True)
class TrialSpec:
    """One trial the planner asks for: a cell and a seed."""

    loss: str
    form: str
    beta_kl: float
    beta_mix: float | None
    seed: int

    @property
    def cell(self) -> CellKey:
        """The cell this trial measures."""
        return (self.loss, self.form, self.beta_kl, self.beta_mix)


@dataclass(frozen=True)
class Lattice:
    """The cells of one (loss, form): the configured beta values, sorted ascending (``beta_mix`` is ``(None,)``
    for a loss without it)."""

    loss: str
    form: str
    beta_kl: tuple[float, ...]
    beta_mix: tuple[float | None, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """``(len(beta_kl), len(beta_mix))``."""
        return len(self.beta_kl), len(self.beta_mix)

    def cell(self, i: int, j: int) -> CellKey:
        """The cell at lattice index ``(i, j)`` (``i`` along beta_kl, ``j`` along beta_mix)."""
        return (self.loss, self.form, self.beta_kl[i], self.beta_mix[j])

    def cells(self) -> list[CellKey]:
        """Every cell, beta_kl-major."""
        return [self.cell(i, j) for i in range(self.shape[0]) for j in range(self.shape[1])]


def lattices(grid: GridConfig) -> list[Lattice]:
    """One :class:`Lattice` per (loss, form) of the grid, in the grid's order."""
    groups: dict[tuple[str, str], Lattice] = {}
    for loss in grid.trials():
        key = (loss.name, loss.form)
        if key not in groups:
            mixes = tuple(sorted(grid.beta_mix)) if loss.beta_mix is not None else (None,)
            groups[key] = Lattice(loss.name, loss.form, tuple(sorted(grid.beta_kl)), mixes)
    return list(groups.values())


def log_midpoint(values: Sequence[float | None], low: int, high: int) -> int | None:
    """The index strictly between ``low`` and ``high`` nearest (in log value) to their log-midpoint, or ``None``
    when they are adjacent (the lattice's resolution)."""
    if high - low < 2:
        return None
    target = (math.log(values[low]) + math.log(values[high])) / 2
    return min(range(low + 1, high), key=lambda k: (abs(math.log(values[k]) - target), k))


def coarse_indices(values: Sequence[float | None], points: int) -> list[int]:
    """``points`` indices evenly spaced in log value from the first to the last, snapped to the nearest value."""
    if len(values) == 1 or values[0] is None:
        return [0]
    logs = [math.log(v) for v in values]
    picked = set()
    for k in range(points):
        target = logs[0] + (logs[-1] - logs[0]) * k / (points - 1)
        picked.add(min(range(len(values)), key=lambda i: (abs(logs[i] - target), i)))
    return sorted(picked)


@dataclass(frozen=True)
class Box:
    """A lattice rectangle ``[i0, i1] x [j0, j1]`` whose corners the planner measures."""

    i0: int
    i1: int
    j0: int
    j1: int

    def corners(self) -> list[tuple[int, int]]:
        """The (up to four distinct) corners."""
        return sorted({(i, j) for i in (self.i0, self.i1) for j in (self.j0, self.j1)})

    def perimeter(self) -> list[tuple[int, int]]:
        """Every lattice index on the box's edges."""
        edges = {(i, j) for i in range(self.i0, self.i1 + 1) for j in (self.j0, self.j1)}
        edges |= {(i, j) for i in (self.i0, self.i1) for j in range(self.j0, self.j1 + 1)}
        return sorted(edges)

    def edges_along(self, axis: int) -> list[list[tuple[int, int]]]:
        """The two edges running along ``axis`` (0: beta_kl, at ``j0`` and ``j1``; 1: beta_mix, at ``i0``, ``i1``)."""
        if axis == 0:
            return [[(i, j) for i in range(self.i0, self.i1 + 1)] for j in sorted({self.j0, self.j1})]
        return [[(i, j) for j in range(self.j0, self.j1 + 1)] for i in sorted({self.i0, self.i1})]

    def split(self, lattice: Lattice, along: tuple[bool, bool] = (True, True)) -> list[Box]:
        """The children at the log-midpoints of the axes ``along`` selects that are wider than one step (``[]``
        when there is none: the lattice's resolution)."""
        mid_i = log_midpoint(lattice.beta_kl, self.i0, self.i1) if along[0] else None
        mid_j = (
            log_midpoint(lattice.beta_mix, self.j0, self.j1) if along[1] and lattice.beta_mix[0] is not None else None
        )
        if mid_i is None and mid_j is None:
            return []
        cuts_i = [(self.i0, mid_i), (mid_i, self.i1)] if mid_i is not None else [(self.i0, self.i1)]
        cuts_j = [(self.j0, mid_j), (mid_j, self.j1)] if mid_j is not None else [(self.j0, self.j1)]
        return [Box(a, b, c, d) for a, b in cuts_i for c, d in cuts_j]


def coarse_boxes(lattice: Lattice, points: int) -> list[Box]:
    """The boxes between consecutive coarse indices of both axes."""
    ii = coarse_indices(lattice.beta_kl, points)
    jj = coarse_indices(lattice.beta_mix, points)
    spans_i = list(zip(ii, ii[1:], strict=False)) or [(ii[0], ii[0])]
    spans_j = list(zip(jj, jj[1:], strict=False)) or [(jj[0], jj[0])]
    return [Box(a, b, c, d) for a, b in spans_i for c, d in spans_j]


def verdict_of(statuses: Sequence[TrialStatus]) -> str:
    """A cell's verdict from its trials' statuses (:func:`sweep.stability.cells.cell_verdict`)."""
    counts: dict[TrialStatus, int] = {}
    for status in statuses:
        counts[TrialStatus(status)] = counts.get(TrialStatus(status), 0) + 1
    return cell_verdict(counts)


class AdaptivePlanner:
    """Proposes trials, records their statuses, and says when the map is done.

    Args:
        config: The ``adaptive`` settings.
        grid: The sweep's grid: its losses, forms, beta values (the lattice) and seeds (in the order they are used).
    """

    def __init__(self, config: AdaptiveConfig, grid: GridConfig) -> None:
        self.config = config
        self.grid = grid
        self.lattices = lattices(grid)
        self.results: dict[CellKey, list[TrialStatus]] = {}
        """Every recorded trial's status per cell (pruned and errored included; they carry no verdict)."""
        self._losses = {(c.name, c.form, c.beta_kl, c.beta_mix): c for c in grid.trials()}
        self._grid_trials = len(self._losses) * len(grid.seeds)
        self._seeds_used: dict[CellKey, int] = {}
        self._pending: set[TrialSpec] = set()
        self._boxes = [coarse_boxes(lattice, config.coarse_points) for lattice in self.lattices]
        self._wanted: list[CellKey] = [
            lattice.cell(i, j)
            for lattice, boxes in zip(self.lattices, self._boxes, strict=True)
            for i, j in sorted({corner for box in boxes for corner in box.corners()})
        ]
        self.n_proposed = 0

    # -- state ------------------------------------------------------------------------------------------------

    @property
    def max_trials(self) -> int:
        """The trial budget: ``max_trials``, never more than the grid's trials."""
        return min(self.config.max_trials or self._grid_trials, self._grid_trials)

    @property
    def max_seeds(self) -> int:
        """Most seeds one cell gets."""
        return min(self.config.max_seeds_per_cell, len(self.grid.seeds))

    @property
    def pending(self) -> frozenset[TrialSpec]:
        """Trials proposed and not yet recorded."""
        return frozenset(self._pending)

    @property
    def done(self) -> bool:
        """Nothing pending and nothing left to propose (resolution reached, or the budget spent)."""
        return not self._pending and not self._candidates()

    def verdicts(self, cell: CellKey) -> list[TrialStatus]:
        """The recorded statuses of a cell that carry a verdict."""
        return [s for s in self.results.get(cell, []) if s.has_verdict]

    def verdict(self, cell: CellKey) -> str | None:
        """The cell's verdict so far (``undetermined`` if no trial gave one), ``None`` if nothing was recorded."""
        return verdict_of(self.results[cell]) if cell in self.results else None

    def _settled(self, cell: CellKey) -> bool:
        return cell in self.results and not any(spec.cell == cell for spec in self._pending)

    def _resolved(self, cell: CellKey) -> bool:
        """Settled, and not waiting for a seed that would settle a disagreement (or give it a verdict at all)."""
        return self._settled(cell) and not (self._can_add_seed(cell) and self._needs_seed(cell))

    # -- proposing --------------------------------------------------------------------------------------------

    def propose(self, n: int) -> list[TrialSpec]:
        """Up to ``n`` new trials (fewer, or none, while the next ones depend on pending results)."""
        proposed: list[TrialSpec] = []
        while len(proposed) < n:
            candidates = self._candidates()
            if not candidates:
                break
            spec = candidates[0]
            self._pending.add(spec)
            self._seeds_used[spec.cell] = self._seeds_used.get(spec.cell, 0) + 1
            self.n_proposed += 1
            proposed.append(spec)
        return proposed

    def record(self, spec: TrialSpec, status: TrialStatus | str) -> None:
        """Record a finished trial's status (any :class:`TrialStatus`; pruned and errored carry no verdict)."""
        self._pending.discard(spec)
        self.results.setdefault(spec.cell, []).append(TrialStatus(status))

    def proposed(self, spec: TrialSpec) -> bool:
        """Whether this trial was proposed (a cell's seeds are proposed in ``grid.seeds`` order)."""
        return spec.seed in self.grid.seeds[: self._seeds_used.get(spec.cell, 0)]

    def withdraw(self, spec: TrialSpec) -> None:
        """Forget a pending proposal that will never run, so that it is proposed again: a resumed sweep's trial list
        lacks it. Proposals lost that way are the latest ones, so a cell's highest seeds."""
        self._pending.discard(spec)
        self._seeds_used[spec.cell] -= 1
        self.n_proposed -= 1

    def adopt(self, spec: TrialSpec) -> None:
        """Count as proposed and pending a trial that a later state of this planner proposed: a resumed sweep's trial
        list holds it."""
        self._pending.add(spec)
        self._seeds_used[spec.cell] = max(self._seeds_used.get(spec.cell, 0), self.grid.seeds.index(spec.seed) + 1)
        self.n_proposed += 1

    def _next_seed(self, cell: CellKey) -> TrialSpec:
        used = self._seeds_used.get(cell, 0)
        return TrialSpec(*cell, seed=self.grid.seeds[used])

    def _can_add_seed(self, cell: CellKey) -> bool:
        return self._settled(cell) and self._seeds_used.get(cell, 0) < self.max_seeds

    def _candidates(self) -> list[TrialSpec]:
        """Trials to run next, most urgent first: wanted cells' initial seeds, seeds that resolve a disagreement or
        a cell without a verdict, then seeds narrowing a wide interval on the boundary."""
        if self.n_proposed >= self.max_trials:
            return []
        self._refine()
        initial = min(self.config.initial_seeds, self.max_seeds)
        first = [self._next_seed(cell) for cell in self._wanted if self._seeds_used.get(cell, 0) < initial]
        if first:
            return first
        unsure = [cell for cell in self._wanted if self._can_add_seed(cell) and self._needs_seed(cell)]
        if unsure:
            return [self._next_seed(cell) for cell in unsure]
        return [self._next_seed(cell) for cell in self._boundary() if self._can_add_seed(cell) and self._wide(cell)]

    def _needs_seed(self, cell: CellKey) -> bool:
        verdicts = self.verdicts(cell)
        return not verdicts or len(set(verdicts)) > 1

    def _wide(self, cell: CellKey) -> bool:
        """All seeds stable so far (only then can another seed flip the verdict: one failure makes a cell fail)
        and the failure rate's Wilson interval wider than ``interval_width``."""
        verdicts = self.verdicts(cell)
        if not verdicts or any(s.is_failure for s in verdicts):
            return False
        low, high = wilson_interval(0, len(verdicts))
        return high - low > self.config.interval_width

    def _mixed(self, lattice: Lattice, cells: list[tuple[int, int]]) -> bool:
        """Whether the recorded verdicts of these cells differ (or one is ``undetermined`` or ``unsettled``)."""
        seen = {self.verdict(lattice.cell(i, j)) for i, j in cells} - {None}
        return len(seen) > 1 or bool(seen & {UNDETERMINED, UNSETTLED})

    def _disagrees(self, lattice: Lattice, box: Box) -> bool:
        return self._mixed(lattice, box.perimeter())

    def _split_axes(self, lattice: Lattice, box: Box) -> tuple[bool, bool]:
        """Split along an axis only where an edge running along it disagrees: a box whose edges along beta_mix
        each agree (boundary crossing it along beta_kl only) is inferred along beta_mix, so it is only bisected
        along beta_kl."""
        return tuple(any(self._mixed(lattice, edge) for edge in box.edges_along(axis)) for axis in (0, 1))

    def _refine(self) -> None:
        """Split every box whose corners are resolved and whose perimeter disagrees; want the new corners."""
        for lattice, boxes in zip(self.lattices, self._boxes, strict=True):
            changed = True
            while changed:
                changed = False
                for box in list(boxes):
                    corners = [lattice.cell(i, j) for i, j in box.corners()]
                    if not all(self._resolved(c) for c in corners) or not self._disagrees(lattice, box):
                        continue
                    children = box.split(lattice, self._split_axes(lattice, box))
                    if not children:
                        continue
                    boxes.remove(box)
                    boxes.extend(children)
                    for child in children:
                        for i, j in child.corners():
                            if lattice.cell(i, j) not in self._wanted:
                                self._wanted.append(lattice.cell(i, j))
                    changed = True

    def _boundary(self) -> list[CellKey]:
        """Recorded cells next to (one lattice step along an axis) a recorded cell of another verdict, in the order
        they were first wanted."""
        found: set[CellKey] = set()
        for lattice in self.lattices:
            n_i, n_j = lattice.shape
            for i in range(n_i):
                for j in range(n_j):
                    here = self.verdict(lattice.cell(i, j))
                    if here is None:
                        continue
                    for a, b in ((i + 1, j), (i, j + 1)):
                        there = self.verdict(lattice.cell(a, b)) if a < n_i and b < n_j else None
                        if there is not None and there != here:
                            found |= {lattice.cell(i, j), lattice.cell(a, b)}
        return [cell for cell in self._wanted if cell in found]

    # -- what Tune runs ---------------------------------------------------------------------------------------

    def loss_config(self, spec: TrialSpec) -> LossConfig:
        """The grid's :class:`LossConfig` of the trial's cell (``tau``, ``beta_mix_lr`` as configured)."""
        return self._losses[spec.cell]

    def grid_entry(self, spec: TrialSpec) -> dict[str, Any]:
        """The trial as one entry of :meth:`sweep.driver.SweepDriver.grid`: ``{"loss": fields, "seed": int}``."""
        return {"loss": dataclasses.asdict(self.loss_config(spec)), "seed": spec.seed}


def spec_of(entry: dict[str, Any]) -> TrialSpec:
    """The trial of one grid entry (``{"loss": LossConfig fields, "seed": int}``): the inverse of
    :meth:`AdaptivePlanner.grid_entry`."""
    loss = entry["loss"]
    return TrialSpec(loss["name"], loss.get("form", "stable"), loss["beta_kl"], loss["beta_mix"], entry["seed"])
