"""Run a DPO-family stability sweep on Ray: ``python sweep/run.py [--config NAME|FILE] [key=value ...]``.

Locally this starts (or joins) a Ray instance; on a cluster submit it as a job::

    ray job submit --working-dir . -- python sweep/run.py --config mistral7b_seed --mlflow-uri http://HEAD:5000

Every input is validated before any cluster work starts: config values, the model spec and every data row.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python sweep/run.py): make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweep.config import ConfigError, SweepConfig, fields_help, load_sweep_config, shipped_configs  # noqa: E402
from trainers.typed_config import add_config_arguments, overrides_from_args  # noqa: E402

logger = logging.getLogger("sweep")

EXIT_OK = 0
"""The sweep produced its stability map (some trials may have diverged, been pruned or errored)."""
EXIT_INCOMPLETE = 1
"""The sweep is incomplete: every trial errored, an evaluation failed after training (the map is still written, the
failure recorded on the trial), or its results could not be written."""
EXIT_BAD_INPUT = 2
"""A config value, CLI flag, model, data row or resource request was rejected before any cluster work."""

CONFIG_ALIASES = {"--mlflow-uri": "mlflow.tracking_uri", "--no-mlflow": "!mlflow.enabled", "--name": "name"}
"""Short flags of config fields; any field is also settable as a positional or ``--set`` ``key=value``."""


def build_parser() -> argparse.ArgumentParser:
    """The CLI; ``--help`` also lists every config field with its default and meaning."""
    parser = argparse.ArgumentParser(
        prog="python sweep/run.py",
        description="Ray Tune stability sweep over (loss, beta_kl, beta_mix, seed) for DPO-family losses.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=fields_help(),
    )
    parser.add_argument(
        "--config",
        default="default",
        help=f"shipped config name ({', '.join(shipped_configs())}) or a YAML file (default: default)",
    )
    add_config_arguments(parser, SweepConfig, CONFIG_ALIASES, positional=True)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep of the same name from Ray Tune's experiment state (finished trials are kept); "
        "rerunning an unchanged config resumes on its own, --resume also accepts a changed one",
    )
    parser.add_argument(
        "--address", default=None, help="Ray address to join (default: RAY_ADDRESS, the job's cluster, or local)"
    )
    parser.add_argument("--dry-run", action="store_true", help="validate config, model and data, print the grid")
    return parser


def parse_config(args: argparse.Namespace) -> SweepConfig:
    """The validated sweep config for parsed CLI arguments (positional overrides first, then the flags in order)."""
    return load_sweep_config(args.config, overrides_from_args(args))


def main(argv: list[str] | None = None) -> int:
    """Validate inputs, run the sweep, write the stability map; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # overrides may come before, between or after the flags
    try:
        config = parse_config(args)
    except ConfigError as err:
        parser.error(str(err))

    from sweep.driver import SweepDriver
    from sweep.errors import SweepInputError, SweepOutputError

    try:
        driver = SweepDriver(config, resume=args.resume, address=args.address)
        driver.validate_inputs()
        if args.dry_run:
            driver.print_plan()
            return EXIT_OK
        outcome = driver.run()
    except SweepInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SweepOutputError as err:
        # The map or the MLflow spool could not be written: Tune's experiment state keeps the trials' results.
        print(f"error: the sweep's results could not be written: {err}; rerun with --resume", file=sys.stderr)
        return EXIT_INCOMPLETE
    print(outcome.describe())
    if outcome.failure:
        print(f"error: {outcome.failure}", file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
