"""The unmeasured cells of an adaptive sweep, filled in from measured neighbours under a stated assumption.

An adaptive sweep (:mod:`sweep.search.lattice`) measures only part of each (loss, form) ``beta_kl x beta_mix`` lattice.
:func:`infer_cells` gives every other lattice cell a row with the columns of
:func:`sweep.stability.cells.aggregate_cells` plus ``inferred=True`` and an ``assumption`` text:

* **Assumption** (:data:`ASSUMPTION`): each verdict region is convex along the lattice axes -- failure is monotone in
  ``beta_kl`` at fixed ``beta_mix`` and in ``beta_mix`` at fixed ``beta_kl``. So a cell lying on its row (or
  column) between two cells of the same verdict, with nothing known in between, gets that verdict. The anchors are
  measured cells or cells inferred by this same rule (which the assumption justifies transitively: the corners of a
  box agree, so do its edges, so does its inside); each row's ``assumption`` names its anchors.
* A cell whose row and column give different verdicts, or that lies between no such pair, stays ``unmeasured``.
  Its counts are zero and its failure rate NaN; no number is ever made up.

Inferred rows carry no trials (``n_trials == 0``, rates NaN); their ``stable`` is ``verdict == "stable"``. The
claims (:mod:`sweep.claims.rules`) drop every ``inferred`` row: only measured trials count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from sweep.search.lattice import Lattice
from sweep.stability.cells import CELL_COLUMNS
from trainers.protocol import TrialStatus

UNMEASURED = "unmeasured"
"""The ``verdict`` of a lattice cell neither measured nor inferable."""
ASSUMPTION = (
    "verdict regions are convex along each axis (failure monotone in beta_kl at fixed beta_mix and in beta_mix at "
    "fixed beta_kl): a cell between two cells of one verdict on its row or column has that verdict"
)
"""The assumption every inferred verdict rests on."""
INFERRED_COLUMNS: tuple[str, ...] = (*CELL_COLUMNS, "inferred", "assumption")
"""Columns of :func:`infer_cells` and :func:`with_inferred` rows."""

Index = tuple[int, int]
_VERDICTS = {status.value for status in TrialStatus if status.has_verdict}


def _between(known: dict[Index, str], line: Sequence[Index]) -> dict[Index, tuple[str, Index, Index]]:
    """Cells of ``line`` strictly between two consecutive known cells of one verdict: ``{cell: (verdict, a, b)}``."""
    marks = [index for index in line if index in known]
    found = {}
    for a, b in zip(marks, marks[1:], strict=False):
        if known[a] == known[b]:
            start, stop = line.index(a), line.index(b)
            found.update({cell: (known[a], a, b) for cell in line[start + 1 : stop]})
    return found


def infer_lattice(measured: dict[Index, str], shape: tuple[int, int]) -> dict[Index, tuple[str, Index, Index]]:
    """The verdicts :data:`ASSUMPTION` gives unmeasured lattice indices, iterated until nothing changes.

    Args:
        measured: Lattice index ``(i, j)`` -> measured verdict (``stable``, ``stalled``, ``collapsed``,
            ``diverged``; other values are no anchor).
        shape: ``(n_beta_kl, n_beta_mix)``.

    Returns:
        ``{(i, j): (verdict, anchor_a, anchor_b)}`` for each inferred index (the two cells it lies between).
    """
    known = {index: verdict for index, verdict in measured.items() if verdict in _VERDICTS}
    rows = [[(i, j) for i in range(shape[0])] for j in range(shape[1])]
    columns = [[(i, j) for j in range(shape[1])] for i in range(shape[0])]
    inferred: dict[Index, tuple[str, Index, Index]] = {}
    conflicted: set[Index] = set()
    while True:
        candidates: dict[Index, list[tuple[str, Index, Index]]] = {}
        for line in (*rows, *columns):
            for cell, found in _between(known, line).items():
                candidates.setdefault(cell, []).append(found)
        new = {}
        for cell, found in sorted(candidates.items()):
            if cell in conflicted or cell in measured:
                continue
            if len({verdict for verdict, _, _ in found}) > 1:
                conflicted.add(cell)
            else:
                new[cell] = found[0]
        if not new:
            return inferred
        inferred.update(new)
        known.update({cell: verdict for cell, (verdict, _, _) in new.items()})


def _key(value: float | None) -> float | None:
    """A beta value as a lookup key (log, rounded: YAML floats and CSV round trips agree); ``None`` if missing."""
    return None if value is None or pd.isna(value) else round(math.log(float(value)), 9)


def _empty_row(lattice: Lattice, i: int, j: int, verdict: str, assumption: str) -> dict[str, object]:
    beta_mix = lattice.beta_mix[j]
    row: dict[str, object] = {column: math.nan for column in CELL_COLUMNS}
    row.update({column: 0 for column in CELL_COLUMNS if column.startswith("n_")})
    row.update(
        loss=lattice.loss,
        form=lattice.form,
        beta_kl=float(lattice.beta_kl[i]),
        beta_mix=math.nan if beta_mix is None else float(beta_mix),
        verdict=verdict,
        stable=verdict == TrialStatus.STABLE.value,
        inferred=True,
        assumption=assumption,
    )
    return row


def _describe(lattice: Lattice, verdict: str, a: Index, b: Index, measured: dict[Index, str]) -> str:
    def name(index: Index) -> str:
        i, j = index
        mix = "" if lattice.beta_mix[j] is None else f", beta_mix={lattice.beta_mix[j]:g}"
        return f"(beta_kl={lattice.beta_kl[i]:g}{mix}; {'measured' if index in measured else 'inferred'})"

    axis = "beta_kl" if a[1] == b[1] else "beta_mix"
    return f"{verdict}: between {name(a)} and {name(b)} along {axis}; assumes {ASSUMPTION}"


def _lattice_rows(lattice: Lattice, cells: pd.DataFrame) -> list[dict[str, object]]:
    """The inferred and unmeasured rows of one lattice, given its measured cells."""
    index_of = {
        (_key(kl), _key(mix)): (i, j) for i, kl in enumerate(lattice.beta_kl) for j, mix in enumerate(lattice.beta_mix)
    }
    group = cells[(cells["loss"] == lattice.loss) & (cells["form"] == lattice.form)]
    measured: dict[Index, str] = {}
    for beta_kl, beta_mix, verdict in zip(group["beta_kl"], group["beta_mix"], group["verdict"], strict=True):
        index = index_of.get((_key(beta_kl), _key(beta_mix)))
        if index is None:
            raise ValueError(
                f"measured cell {lattice.loss}[{lattice.form}] beta_kl={beta_kl:g} beta_mix={beta_mix} is not on the "
                f"lattice beta_kl={list(lattice.beta_kl)} x beta_mix={list(lattice.beta_mix)}"
            )
        measured[index] = verdict
    inferred = infer_lattice(measured, lattice.shape)
    rows = []
    for i in range(lattice.shape[0]):
        for j in range(lattice.shape[1]):
            if (i, j) in measured:
                continue
            if (i, j) in inferred:
                verdict, a, b = inferred[(i, j)]
                rows.append(_empty_row(lattice, i, j, verdict, _describe(lattice, verdict, a, b, measured)))
            else:
                text = "not measured, and no two cells of one verdict enclose it on its row or column"
                rows.append(_empty_row(lattice, i, j, UNMEASURED, text))
    return rows


def infer_cells(cells: pd.DataFrame, lattice: Sequence[Lattice]) -> pd.DataFrame:
    """Rows for every lattice cell that was not measured: inferred under :data:`ASSUMPTION`, or ``unmeasured``.

    Args:
        cells: The measured cells (:func:`sweep.stability.cells.aggregate_cells`); a cell whose verdict is
            ``undetermined`` (every trial pruned or errored) is measured but anchors nothing.
        lattice: The sweep's lattices (:func:`sweep.search.lattice.lattices` of its grid).

    Returns:
        One row per unmeasured lattice cell with :data:`INFERRED_COLUMNS`: ``inferred=True``, ``verdict`` the
        inferred one or ``unmeasured``, ``assumption`` saying why (its anchors), counts 0 and rates NaN.

    Raises:
        ValueError: If a measured cell is not on its lattice.
    """
    rows = [row for group in lattice for row in _lattice_rows(group, cells)]
    frame = pd.DataFrame(rows, columns=list(INFERRED_COLUMNS))
    return frame.astype(_dtypes()) if len(frame) else frame


def with_inferred(cells: pd.DataFrame, lattice: Sequence[Lattice]) -> pd.DataFrame:
    """The measured cells (``inferred=False``, empty ``assumption``) and :func:`infer_cells`' rows, sorted by
    loss, form, beta_kl and beta_mix: the cell frame of an adaptive sweep."""
    measured = cells.assign(inferred=False, assumption="")
    extra = infer_cells(cells, lattice)
    frame = pd.concat([measured, extra], ignore_index=True) if len(extra) else measured
    frame = frame.sort_values(["loss", "form", "beta_kl", "beta_mix"], na_position="last", kind="stable")
    return frame.reset_index(drop=True).astype(_dtypes())


def _dtypes() -> dict[str, object]:
    dtypes: dict[str, object] = {c: "int64" if c.startswith("n_") else "float64" for c in CELL_COLUMNS}
    dtypes.update({"loss": str, "form": str, "verdict": str, "stable": bool, "inferred": bool, "assumption": str})
    return dtypes


__all__ = ["ASSUMPTION", "INFERRED_COLUMNS", "UNMEASURED", "infer_cells", "infer_lattice", "with_inferred"]
