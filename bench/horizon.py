"""Benchmark: the same cells at the quick start's step count and at ~2.5x as many steps keep their settled verdicts.

Usage::

    python bench/horizon.py                          # the default config's grid, its max_steps and 2.5x
    python bench/horizon.py --factor 2.5 grid.losses=[dpo,discopop] grid.beta_kl=[0.05,1.0] grid.beta_mix=[]

One sweep of the config (``python sweep/run.py --no-mlflow``, no MT-Bench) at ``round(factor x max_steps)`` steps,
everything else equal. The config must use a constant learning-rate schedule: then a trial's first steps do not depend
on how many it is given, and each trial's status at the config's own ``max_steps`` (with its extension and
``min_steps`` rules) is read from the long trial's reports (:func:`sweep.trials.horizon.status_at_horizon`; exact,
checked against a separate 12-step sweep in ``tests/sweep/test_horizon.py``). For every trial whose verdict at the
short horizon is settled (a verdict status, not ``unsettled``), the long run must reach the same verdict; trials
unsettled at the short horizon are reported, not compared (they made no claim). Whether a change crosses a failure
category (``failed``, ``unstable``; ``trainers.protocol.Failure``) is reported beside it. Issue 23's two recorded
cases are checked by name: DPO at beta 1 must be ``stable`` at the long horizon, DiscoPOP at beta 0.05 ``reversed``.

Writes ``bench/results/horizon.json`` (the trial table, the comparison, the load average) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
from _common import ROOT, load_average, run_logged, sweep_command, trials_table, tune_results

sys.path.insert(0, str(ROOT))  # run as a script (python bench/horizon.py): make the project importable

from sweep.config import load_sweep_config  # noqa: E402
from sweep.trials.horizon import status_at_horizon  # noqa: E402
from trainers.protocol import Failure, TrialStatus  # noqa: E402

KEY = ["loss", "form", "beta_kl", "beta_mix", "seed"]
EXPECTED = {("dpo", 1.0): TrialStatus.STABLE.value, ("discopop", 0.05): TrialStatus.REVERSED.value}
"""Issue 23's recorded cases: their verdict at the long horizon."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/horizon.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="default", help="sweep config (default: the quick start's)")
    p.add_argument("--factor", type=float, default=2.5, help="long horizon = round(factor x max_steps)")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "horizon.json")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for the sweep")
    return p


def _sweep(config: str, name: str, storage: Path, overrides: list[str]) -> tuple[pd.DataFrame, float]:
    scoring_off = ["mt_bench.policy=none", "alpaca_eval.policy=none"]
    _, wall = run_logged(sweep_command(name, storage, [*scoring_off, *overrides], config), storage / f"{name}.log")
    return trials_table(storage, name), wall


def short_statuses(storage: Path, name: str, config, long_steps: int) -> pd.DataFrame:
    """Each long trial's status at the config's own horizon, read from its reports, and its ``profile``: the status
    (``status@step it ends``) a trial planned for each evaluated step count from ``max_steps`` to ``long_steps`` would
    end with, where the long trial covers it."""
    results = pd.DataFrame(tune_results(storage, name))
    # Only a trial's final report says how many held-out pairs it read; every trial of a sweep reads the same ones.
    n_pairs = int(results["eval/pairs"].max())
    train = config.train
    rules = {"n_pairs": n_pairs, "verdicts": train.verdicts, "divergence": train.divergence}
    rows = []
    for _, reports in results.groupby("_trial_dir"):
        trial = reports["config"].iloc[0]["trial"]
        status, reason, step = status_at_horizon(
            reports,
            max_steps=train.max_steps,
            extend_until_settled=train.extend_until_settled,
            min_steps=train.min_steps,
            **rules,
        )
        profile = {}
        for horizon in range(train.max_steps, long_steps + 1, max(train.eval_steps, 1)):
            try:
                at, _, end = status_at_horizon(
                    reports, max_steps=horizon, extend_until_settled=train.extend_until_settled, min_steps=None, **rules
                )
                profile[horizon] = f"{at.value}@{end}"
            except ValueError:  # the long trial stopped before this horizon's end: no answer
                profile[horizon] = None
        loss = trial["loss"]
        beta_mix = loss["beta_mix"] if loss["beta_mix"] is not None else float("nan")
        key = [loss["name"], loss.get("form", "stable"), loss["beta_kl"], beta_mix, trial["seed"]]
        rows.append(
            {
                **dict(zip(KEY, key, strict=True)),
                "status": status.value,
                "reason": reason,
                "steps": step,
                "profile": profile,
            }
        )
    return pd.DataFrame(rows)


def _category_changed(short: str, long: str) -> bool:
    return any(f.includes(short) != f.includes(long) for f in Failure)


def compare(short: pd.DataFrame, long: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its status and reason at both horizons, and whether a settled verdict changed."""
    both = short.merge(long, on=KEY, suffixes=("_short", "_long"), how="outer")
    settled = both["status_short"].map(lambda s: isinstance(s, str) and TrialStatus(s).has_verdict)
    both["settled_short"] = settled
    both["changed"] = settled & (both["status_short"] != both["status_long"])
    both["category_changed"] = [
        bool(changed) and isinstance(b, str) and TrialStatus(b).has_verdict and _category_changed(a, b)
        for a, b, changed in zip(both["status_short"], both["status_long"], both["changed"], strict=True)
    ]
    columns = ["status_short", "steps_short", "status_long", "steps_long", "settled_short", "changed"]
    return both[[*KEY, *columns, "category_changed", "reason_short", "reason_long", "profile"]]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = load_sweep_config(args.config, args.overrides)
    steps = config.train.max_steps
    if steps < 1:
        raise SystemExit("the config must set train.max_steps")
    if config.train.lr_scheduler != "constant":
        raise SystemExit(
            f"train.lr_scheduler={config.train.lr_scheduler}: the short horizon is read from the long run's first "
            "steps, which needs train.lr_scheduler=constant"
        )
    long_steps = round(args.factor * steps)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="horizon-") as tmp:
        storage = Path(tmp)
        long, long_wall = _sweep(args.config, "long", storage, [*args.overrides, f"train.max_steps={long_steps}"])
        short = short_statuses(storage, "long", config, long_steps)
    table = compare(short, long)
    checks = {
        f"{loss} beta={beta:g}": sorted(set(table[(table["loss"] == loss) & (table["beta_kl"] == beta)]["status_long"]))
        for (loss, beta), _ in EXPECTED.items()
    }
    expected_ok = all(
        statuses == [EXPECTED[key]] for key, statuses in zip(EXPECTED, checks.values(), strict=True) if statuses
    )
    result = {
        "config": args.config,
        "overrides": args.overrides,
        "steps": [steps, long_steps],
        "wall_s": round(long_wall, 1),
        "load_average": [load_before, load_average()],
        "settled_changed": int(table["changed"].sum()),
        "settled_short": int(table["settled_short"].sum()),
        "category_changed": int(table["category_changed"].sum()),
        "expected_long": {name: statuses for name, statuses in checks.items()},
        "expected_ok": expected_ok,
        "trials": json.loads(table.to_json(orient="records")),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        columns = ["status_short", "steps_short", "status_long", "steps_long", "changed", "category_changed"]
        print(table[[*KEY, *columns]].to_string(index=False))
        print("\nstatus@end step of a trial planned for each step count (the extension included):")
        print(
            pd.DataFrame(
                [{**dict(zip(KEY, row[:5], strict=True)), **row[5]} for row in table[[*KEY, "profile"]].values]
            ).to_string(index=False)
        )
    print(
        f"\n{steps} vs {long_steps} steps: {result['settled_changed']} of {result['settled_short']} settled verdicts "
        f"changed ({result['category_changed']} across a failure category); issue 23's cases at {long_steps} steps: "
        f"{checks} ({'as expected' if expected_ok else 'NOT'}); wall {long_wall:.0f} s; "
        f"load {load_before} -> {result['load_average'][1]}"
    )
    return 0 if result["settled_changed"] == 0 and expected_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
