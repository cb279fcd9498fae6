"""Tests for ``sweep.stability.map`` and its modules on hand-made trial frames with hand-computed expectations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg

from sweep.confidence import wilson_interval
from sweep.stability.cells import CELL_COLUMNS, aggregate_cells, cell_verdict, validate_trials
from sweep.stability.heatmap_grid import heatmap_labels
from sweep.stability.map import StabilityMap, write_stability_map
from sweep.stability.table import format_beta, format_cells_table
from trainers.protocol import TrialStatus

NAN = math.nan
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The stable-region outline colour (#0073ff) as RGB in [0, 1].
OUTLINE_RGB = np.array([0x00, 0x73, 0xFF]) / 255.0


def _trial(trial_id, loss, beta_kl, beta_mix, seed, status, *, acc=NAN, step=NAN, steps=200, mt=NAN):
    """One trial row as the driver builds it."""
    return {
        "trial_id": trial_id,
        "loss": loss,
        "beta_kl": beta_kl,
        "beta_mix": beta_mix,
        "seed": seed,
        "status": status,
        "reason": {"diverged": "non_finite_grad (numerical)", "pruned": "asha rung 2"}.get(status),
        "diverged_step": step,
        "steps": steps,
        "eval_accuracy": acc,
        "mt_bench_score": mt,
        "mt_bench_reason": None if not math.isnan(mt) else ("diverged" if status == "diverged" else "not selected"),
    }


def _sweep_frame() -> pd.DataFrame:
    """Five cells over three losses; the expectations below are computed by hand from these rows.

    * dlrml (0.1, 0.05): stable 0.60, diverged @40, stable 0.70 -> collapse 1/3, div step 40, acc 0.65.
    * dlrml (0.1, 0.5): stable 0.62, pruned 0.55, errored -> collapse 0/1, acc mean = median = 0.585.
    * dpo (0.1, NaN): stable 0.60 (MT 6.0), stable 0.64, diverged @100, diverged @300
      -> collapse 2/4, div step median 200, acc 0.62, MT-Bench 6.0 from one scored trial.
    * dpo (0.5, NaN): errored, errored -> no verdict, never stable.
    * ipo (0.1, NaN): stable 0.58 (MT 5.0), stable 0.62 (MT 7.0), diverged without a recorded step
      after 75 steps -> collapse 1/3, div step 75, MT-Bench 6.0 from two scored trials.
    """
    rows = [
        _trial("a0", "dlrml", 0.1, 0.05, 0, "stable", acc=0.60),
        _trial("a1", "dlrml", 0.1, 0.05, 1, "diverged", step=40, steps=40),
        _trial("a2", "dlrml", 0.1, 0.05, 2, "stable", acc=0.70),
        _trial("b0", "dlrml", 0.1, 0.5, 0, "stable", acc=0.62),
        _trial("b1", "dlrml", 0.1, 0.5, 1, "pruned", acc=0.55, steps=50),
        _trial("b2", "dlrml", 0.1, 0.5, 2, "errored", steps=0),
        _trial("c0", "dpo", 0.1, NAN, 0, "stable", acc=0.60, mt=6.0),
        _trial("c1", "dpo", 0.1, NAN, 1, "stable", acc=0.64),
        _trial("c2", "dpo", 0.1, NAN, 2, "diverged", step=100, steps=100),
        _trial("c3", "dpo", 0.1, NAN, 3, "diverged", step=300, steps=300),
        _trial("d0", "dpo", 0.5, NAN, 0, "errored", steps=0),
        _trial("d1", "dpo", 0.5, NAN, 1, "errored", steps=0),
        _trial("e0", "ipo", 0.1, NAN, 0, "stable", acc=0.58, mt=5.0),
        _trial("e1", "ipo", 0.1, NAN, 1, "stable", acc=0.62, mt=7.0),
        _trial("e2", "ipo", 0.1, NAN, 2, "diverged", steps=75),
    ]
    return pd.DataFrame(rows)


def _cell(cells: pd.DataFrame, loss: str, beta_kl: float, beta_mix: float) -> pd.Series:
    """The single cell row for a hyperparameter point (NaN ``beta_mix`` matched as missing)."""
    mix = cells["beta_mix"].isna() if math.isnan(beta_mix) else cells["beta_mix"] == beta_mix
    match = cells[(cells["loss"] == loss) & (cells["beta_kl"] == beta_kl) & mix]
    assert len(match) == 1, f"expected one cell for {(loss, beta_kl, beta_mix)}, got {len(match)}"
    return match.iloc[0]


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    return aggregate_cells(_sweep_frame())


def test_one_row_per_cell_sorted_with_nan_beta_mix_kept(cells):
    assert list(cells.columns) == list(CELL_COLUMNS)
    keys = list(cells[["loss", "beta_kl"]].itertuples(index=False, name=None))
    assert keys == [("dlrml", 0.1), ("dlrml", 0.1), ("dpo", 0.1), ("dpo", 0.5), ("ipo", 0.1)]
    assert cells["beta_mix"].tolist()[:2] == [0.05, 0.5]
    assert cells["beta_mix"].iloc[2:].isna().all()
    # All four dpo trials at beta_kl=0.1 land in one cell despite their missing beta_mix.
    assert _cell(cells, "dpo", 0.1, NAN)["n_trials"] == 4
    assert cells["n_trials"].sum() == len(_sweep_frame())


def test_failed_rate_across_seeds(cells):
    cell = _cell(cells, "dlrml", 0.1, 0.05)
    assert (cell["n_trials"], cell["n_diverged"], cell["n_stable"], cell["n_verdict"]) == (3, 1, 2, 3)
    assert cell["failed_rate"] == pytest.approx(1 / 3)
    assert _cell(cells, "dpo", 0.1, NAN)["failed_rate"] == pytest.approx(0.5)


def test_errored_and_pruned_carry_no_verdict(cells):
    cell = _cell(cells, "dlrml", 0.1, 0.5)
    assert (cell["n_trials"], cell["n_errored"], cell["n_pruned"], cell["n_verdict"]) == (3, 1, 1, 1)
    assert cell["failed_rate"] == 0.0
    assert bool(cell["stable"]) is True
    # Pruned accuracy counts, errored has none: mean and median of (0.62, 0.55).
    assert cell["eval_accuracy_mean"] == pytest.approx(0.585)
    assert cell["eval_accuracy_median"] == pytest.approx(0.585)


def test_a_cell_whose_trials_were_all_pruned_is_not_called_stable():
    """ASHA stopped both seeds at step 2 without a divergence; they might diverge at step 3 (the early-stopping
    benchmark saw exactly that), so the cell has no verdict rather than a collapse rate of 0."""
    frame = pd.DataFrame(
        [
            _trial("p0", "dpo", 50.0, NAN, 0, "pruned", acc=0.40, steps=2),
            _trial("p1", "dpo", 50.0, NAN, 1, "pruned", acc=0.45, steps=2),
            _trial("q0", "dpo", 500.0, NAN, 0, "pruned", acc=0.25, steps=2),
            _trial("q1", "dpo", 500.0, NAN, 1, "diverged", step=2, steps=2),
        ]
    )
    pruned_only, mixed = (_cell(aggregate_cells(frame), "dpo", beta, NAN) for beta in (50.0, 500.0))
    assert (pruned_only["n_pruned"], pruned_only["n_verdict"]) == (2, 0)
    assert math.isnan(pruned_only["failed_rate"]) and not pruned_only["stable"]
    assert pruned_only["eval_accuracy_mean"] == pytest.approx(0.425)  # what ASHA ranked them on is still shown
    assert (mixed["n_verdict"], mixed["failed_rate"], bool(mixed["stable"])) == (1, 1.0, False)


def test_errored_only_cell_has_no_verdict_and_is_not_stable():
    cell = _cell(aggregate_cells(_sweep_frame(), stable_threshold=1.0), "dpo", 0.5, NAN)
    assert cell["n_errored"] == 2
    assert cell["n_verdict"] == 0
    assert math.isnan(cell["failed_rate"])
    assert bool(cell["stable"]) is False


def test_median_steps_to_divergence(cells):
    assert _cell(cells, "dpo", 0.1, NAN)["median_steps_to_divergence"] == 200.0
    assert _cell(cells, "dlrml", 0.1, 0.05)["median_steps_to_divergence"] == 40.0
    # A diverged trial without a recorded step falls back to the steps it trained.
    assert _cell(cells, "ipo", 0.1, NAN)["median_steps_to_divergence"] == 75.0
    assert math.isnan(_cell(cells, "dlrml", 0.1, 0.5)["median_steps_to_divergence"])


def test_eval_accuracy_ignores_diverged(cells):
    cell = _cell(cells, "dpo", 0.1, NAN)
    assert cell["eval_accuracy_mean"] == pytest.approx(0.62)
    assert cell["eval_accuracy_median"] == pytest.approx(0.62)
    assert math.isnan(_cell(cells, "dpo", 0.5, NAN)["eval_accuracy_mean"])


def test_mt_bench_mean_ignores_missing(cells):
    dpo = _cell(cells, "dpo", 0.1, NAN)
    assert (dpo["n_mt_bench"], dpo["mt_bench_mean"]) == (1, 6.0)
    ipo = _cell(cells, "ipo", 0.1, NAN)
    assert (ipo["n_mt_bench"], ipo["mt_bench_mean"]) == (2, 6.0)
    assert math.isnan(_cell(cells, "dlrml", 0.1, 0.05)["mt_bench_mean"])


def test_mt_bench_columns_are_optional():
    frame = _sweep_frame().drop(columns=["mt_bench_score", "mt_bench_reason"])
    cells = aggregate_cells(frame)
    assert cells["mt_bench_mean"].isna().all()
    assert (cells["n_mt_bench"] == 0).all()


def test_nan_beta_mix_given_as_none_groups_like_nan():
    frame = _sweep_frame().astype({"beta_mix": object})
    frame.loc[frame["beta_mix"].isna(), "beta_mix"] = None
    pd.testing.assert_frame_equal(aggregate_cells(frame), aggregate_cells(_sweep_frame()))


@pytest.mark.parametrize(
    ("threshold", "stable_cells"),
    [
        (0.0, {("dlrml", 0.5)}),
        (0.3, {("dlrml", 0.5)}),
        (0.34, {("dlrml", 0.05), ("dlrml", 0.5), ("ipo", None)}),
        (0.5, {("dlrml", 0.05), ("dlrml", 0.5), ("dpo", None), ("ipo", None)}),
    ],
)
def test_stable_flag_follows_threshold(threshold, stable_cells):
    cells = aggregate_cells(_sweep_frame(), stable_threshold=threshold)
    stable = cells[cells["stable"]]
    found = {(r.loss, None if math.isnan(r.beta_mix) else r.beta_mix) for r in stable.itertuples()}
    assert found == stable_cells
    assert cells["stable"].dtype == bool


def test_bad_threshold_rejected():
    with pytest.raises(ValueError, match="stable_threshold"):
        aggregate_cells(_sweep_frame(), stable_threshold=1.5)


def test_missing_columns_named():
    frame = _sweep_frame().drop(columns=["status", "eval_accuracy"])
    with pytest.raises(ValueError, match="missing required column") as info:
        aggregate_cells(frame)
    assert "status" in str(info.value) and "eval_accuracy" in str(info.value)


def test_unknown_status_rejected_with_row():
    frame = _sweep_frame()
    frame.loc[4, "status"] = "crashed"
    with pytest.raises(ValueError, match=r"row 4, field 'status'.*'crashed'"):
        aggregate_cells(frame)


@pytest.mark.parametrize(
    ("row", "column", "value", "pattern"),
    [
        (2, "eval_accuracy", 1.7, r"row 2, field 'eval_accuracy'"),
        (0, "beta_kl", -0.1, r"row 0, field 'beta_kl'"),
        (5, "beta_kl", "big", r"row 5, field 'beta_kl'.*not a number"),
        (6, "mt_bench_score", 11.0, r"row 6, field 'mt_bench_score'"),
        (1, "trial_id", "a0", r"row 1, field 'trial_id'.*duplicate"),
        (3, "loss", "", r"row 3, field 'loss'"),
    ],
)
def test_bad_values_rejected_with_row_and_field(row, column, value, pattern):
    frame = _sweep_frame().astype({column: object})
    frame.at[row, column] = value
    with pytest.raises(ValueError, match=pattern):
        validate_trials(frame)


def test_format_beta():
    values = (0.1, 0.05, 2.5, 0.001, 0.0005, 2.5e-4, 1e-5, 1000.0, 2e5, NAN)
    expected = ["0.1", "0.05", "2.5", "0.001", "5e-4", "2.5e-4", "1e-5", "1000", "2e5", "none"]
    assert [format_beta(v) for v in values] == expected


def test_format_cells_table(cells):
    table = format_cells_table(cells)
    lines = table.splitlines()
    assert len(lines) == 2 + len(cells)
    assert lines[0].split()[:4] == ["loss", "form", "beta_kl", "beta_mix"]
    dlrml = lines[2].split()
    assert dlrml[:7] == ["dlrml", "stable", "0.1", "0.05", "3", "2/0/0/0/1", "0/0/0/0"]
    low, high = wilson_interval(1, 3)
    assert lines[0].split()[5:10] == ["stab/stall/rev/coll/div", "unset/pruned/intr/err", "failed", "[95%", "CI]"]
    assert lines[2].count(f"0.33 [{low:.2f}, {high:.2f}]") == 2, "one diverged of 3: failed and unstable alike"
    assert lines[2].endswith("diverged")
    assert lines[3].endswith("stable")
    errored_only = lines[5].split()
    assert errored_only[:4] == ["dpo", "stable", "0.5", "none"]
    assert lines[5].endswith("? (no verdict)")  # neither stable nor unstable
    assert format_cells_table(cells.iloc[:0]) == "(no cells)"
    with pytest.raises(ValueError, match="failed_rate"):
        format_cells_table(cells.drop(columns=["failed_rate"]))


# ---------------------------------------------------------------------------------------------------------
# Written files
# ---------------------------------------------------------------------------------------------------------


def _outline_pixels(path: Path) -> int:
    """Number of pixels painted in the stable-outline colour."""
    rgb = mpimg.imread(path)[..., :3]
    return int((np.abs(rgb - OUTLINE_RGB).max(axis=-1) < 0.02).sum())


@pytest.fixture(scope="module")
def stability_map(tmp_path_factory) -> StabilityMap:
    return write_stability_map(_sweep_frame(), tmp_path_factory.mktemp("map") / "stability")


def test_all_files_written(stability_map):
    out = stability_map.out_dir
    expected = {"trials.csv", "trials.parquet", "cells.csv", "cells.parquet", "stability_overview.png"}
    expected |= {f"{kind}_{loss}.png" for kind in ("failed", "score") for loss in ("dlrml", "dpo", "ipo")}
    assert {p.name for p in stability_map.files} == expected
    assert {p.name for p in out.iterdir()} == expected
    assert all(p.parent == out and p.stat().st_size > 0 for p in stability_map.files)


def test_pngs_are_valid_images(stability_map):
    for path in stability_map.figures:
        assert path.read_bytes()[:8] == PNG_MAGIC, path
    pixels = mpimg.imread(stability_map.figure("failed_dlrml.png"))
    assert pixels.ndim == 3 and pixels.shape[2] == 4
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100


def test_tables_round_trip(stability_map):
    out = stability_map.out_dir
    cells = pd.read_parquet(out / "cells.parquet")
    pd.testing.assert_frame_equal(cells, stability_map.cells)
    pd.testing.assert_frame_equal(cells, aggregate_cells(_sweep_frame()))
    trials = pd.read_parquet(out / "trials.parquet")
    assert trials["trial_id"].tolist() == _sweep_frame()["trial_id"].tolist()
    assert trials["beta_mix"].isna().sum() == 9
    csv_cells = pd.read_csv(out / "cells.csv")
    assert len(csv_cells) == 5
    assert csv_cells["beta_mix"].isna().sum() == 3
    assert csv_cells["failed_rate"].iloc[0] == pytest.approx(1 / 3)


def test_score_figure_has_mt_bench_panel_only_when_scored(stability_map):
    # Figures are saved at a fixed size, so a second panel doubles the width.
    one_panel = mpimg.imread(stability_map.figure("failed_dpo.png")).shape
    with_mt_bench = mpimg.imread(stability_map.figure("score_dpo.png")).shape
    without_mt_bench = mpimg.imread(stability_map.figure("score_dlrml.png")).shape
    assert with_mt_bench[1] == 2 * one_panel[1]
    assert without_mt_bench[1] == mpimg.imread(stability_map.figure("failed_dlrml.png")).shape[1]


def test_stable_region_outlined_only_where_stable(stability_map, tmp_path):
    # dlrml (0.1, 0.5) is stable at threshold 0: its collapse map carries the outline; dpo has no stable cell.
    assert _outline_pixels(stability_map.figure("failed_dlrml.png")) > 100
    dpo_map = stability_map.figure("failed_dpo.png")
    legend_only = _outline_pixels(dpo_map)
    # With every dpo cell stable (threshold 1), the strip outline adds many outline pixels over the legend's.
    all_stable = write_stability_map(_sweep_frame()[lambda f: f["loss"] == "dpo"], tmp_path, stable_threshold=1.0)
    assert _outline_pixels(all_stable.figure("failed_dpo.png")) > legend_only + 500


def test_empty_frame_rejected(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        write_stability_map(_sweep_frame().iloc[:0], tmp_path)


def test_stability_map_rejects_foreign_files(tmp_path):
    stray = tmp_path / "elsewhere.png"
    with pytest.raises(ValueError, match="not a file written into"):
        StabilityMap(out_dir=tmp_path, trials=_sweep_frame(), cells=pd.DataFrame(), tables=[], figures=[stray])


def test_heatmap_labels_say_why_a_cell_has_no_verdict(tmp_path):
    """A collapse cell without a verdict is labelled by what ended its trials, not "err" whenever it is NaN."""
    frame = pd.DataFrame(
        [
            _trial("p0", "dlrml", 0.1, 0.05, 0, "pruned", acc=0.40, steps=2),
            _trial("p1", "dlrml", 0.1, 0.05, 1, "pruned", acc=0.50, steps=2),
            _trial("e0", "dlrml", 0.2, 0.05, 0, "errored", steps=0),
            _trial("m0", "dlrml", 0.1, 0.5, 0, "pruned", acc=0.50, steps=2),
            _trial("m1", "dlrml", 0.1, 0.5, 1, "errored", steps=0),
            _trial("c0", "dpo", 0.1, NAN, 0, "stable", acc=0.60),
            _trial("c1", "dpo", 0.1, NAN, 1, "diverged", step=5, steps=5),
            _trial("q0", "dpo", 0.2, NAN, 0, "pruned", acc=0.70, steps=2),
        ]
    )
    cells = aggregate_cells(frame)
    # Rows are beta_mix (0.05, 0.5), columns beta_kl (0.1, 0.2); dlrml has no (0.2, 0.5) cell.
    assert heatmap_labels(cells, "dlrml") == [["pruned", "err"], ["n/a", ""]]
    assert heatmap_labels(cells, "dlrml", detailed=True) == [["all\npruned", "all\nerrored"], ["no\nverdict", ""]]
    assert heatmap_labels(cells, "dpo", detailed=True) == [["0.50\n1/2\ndiverged", "all\npruned"]]
    # Pruned trials still have the accuracy ASHA ranked them on; errored ones have none.
    assert heatmap_labels(cells, "dlrml", "accuracy") == [["0.45", "n/a"], ["0.50", ""]]
    # And the figures with such cells are drawn.
    stability_map = write_stability_map(frame, tmp_path)
    assert stability_map.figure("failed_dlrml.png").read_bytes()[:8] == PNG_MAGIC


def test_forms_are_separate_cells_and_separate_map_series():
    frame = pd.DataFrame(
        [
            {**_trial("s0", "discopop", 1.0, NAN, 0, "stable", acc=0.8), "form": "stable"},
            {**_trial("l0", "discopop", 1.0, NAN, 0, "diverged", step=3, steps=3), "form": "literal"},
        ]
    )
    cells = aggregate_cells(frame)
    assert list(zip(cells["form"], cells["verdict"], strict=True)) == [("literal", "diverged"), ("stable", "stable")]
    assert heatmap_labels(cells, "discopop") == [["0.00"]]
    assert heatmap_labels(cells, "discopop[literal]") == [["1.00"]]


def test_stalled_and_collapsed_count_as_failures_and_name_the_cell():
    """Seeds: stable, stalled, stalled, collapsed -> 3 of 4 failed; the most frequent failure names the cell;
    the interval is Wilson's for 3/4."""
    rows = [
        _trial("a", "dlrml", 0.05, 0.2, 0, "stable", acc=0.8),
        _trial("b", "dlrml", 0.05, 0.2, 1, "stalled", acc=0.55),
        _trial("c", "dlrml", 0.05, 0.2, 2, "stalled", acc=0.5),
        _trial("d", "dlrml", 0.05, 0.2, 3, "collapsed", acc=0.45),
    ]
    cell = aggregate_cells(pd.DataFrame(rows)).iloc[0]
    assert (cell["n_stable"], cell["n_stalled"], cell["n_collapsed"], cell["n_verdict"]) == (1, 2, 1, 4)
    assert cell["failed_rate"] == 0.75 and cell["verdict"] == "stalled" and not cell["stable"]
    assert (cell["failed_low"], cell["failed_high"]) == pytest.approx(wilson_interval(3, 4))
    accs = [0.8, 0.55, 0.5, 0.45]
    assert cell["eval_accuracy_std"] == pytest.approx(pd.Series(accs).std(ddof=1))


def test_a_tie_between_failures_names_the_most_severe():
    counts = {TrialStatus.STALLED: 1, TrialStatus.DIVERGED: 1, TrialStatus.STABLE: 2}
    assert cell_verdict(counts) == "diverged"
    assert cell_verdict({TrialStatus.PRUNED: 2}) == "undetermined"


def test_failed_and_unstable_are_the_one_definition_of_failure():
    """Defect 3 of issue 23: the map, the claims and MLflow used three definitions. A cell with one trial of each
    verdict: failed counts stalled + reversed + collapsed + diverged (4/5), unstable collapsed + diverged (2/5); the
    trials without a verdict (unsettled, pruned, interrupted, errored) count in neither."""
    verdicts = ("stable", "stalled", "reversed", "collapsed", "diverged")
    others = ("unsettled", "pruned", "interrupted", "errored")
    rows = [_trial(f"t{i}", "dlrml", 0.05, 0.2, i, status, acc=0.6) for i, status in enumerate(verdicts + others)]
    cell = aggregate_cells(pd.DataFrame(rows)).iloc[0]
    assert (cell["n_verdict"], cell["n_failed"], cell["n_unstable"]) == (5, 4, 2)
    assert (cell["failed_rate"], cell["unstable_rate"]) == (0.8, 0.4)
    assert (cell["unstable_low"], cell["unstable_high"]) == pytest.approx(wilson_interval(2, 5))
    assert cell["verdict"] == "diverged", "a tie between failures names the most severe"


def test_a_cell_of_unsettled_trials_is_unsettled_not_undetermined():
    rows = [_trial(f"u{i}", "dpo", 0.1, NAN, i, "unsettled", acc=0.6) for i in range(2)]
    cell = aggregate_cells(pd.DataFrame(rows)).iloc[0]
    assert cell["verdict"] == "unsettled" and cell["n_verdict"] == 0 and not cell["stable"]
    assert math.isnan(cell["failed_rate"])
    assert format_cells_table(aggregate_cells(pd.DataFrame(rows))).splitlines()[2].endswith("unsettled")
    assert cell_verdict({TrialStatus.UNSETTLED: 1, TrialStatus.STABLE: 1}) == "stable", "settled trials decide"
