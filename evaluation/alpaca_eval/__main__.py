"""``python -m evaluation.alpaca_eval``: AlpacaEval 2.0 of one model against a baseline, from the command line.

Usage::

    python -m evaluation.alpaca_eval --model PATH --out DIR --baseline-model embedded      # vs SFT, offline
    python -m evaluation.alpaca_eval --model PATH --out DIR --instructions hub --baseline hub --judge-backend openai
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from evaluation.alpaca_eval.config import AlpacaEvalConfig
from evaluation.alpaca_eval.judge import OpenAIPairJudge, PairJudge, build_pair_judge
from evaluation.alpaca_eval.pipeline import (
    AlpacaEvalData,
    format_scores,
    load_alpaca_eval_data,
    score_outputs,
    write_alpaca_outputs,
)
from evaluation.cli import (
    add_model_arguments,
    check_generation_backend,
    check_model_specs,
    model_name,
    parse_config,
    resolve_device,
)
from evaluation.judge_client import JudgeError
from trainers.typed_config import config_parser

CONFIG_ALIASES = {
    "--instructions": "instructions",
    "--baseline": "baseline",
    "--limit": "limit",
    "--max-new-tokens": "max_new_tokens",
    "--batch-size": "generation_batch_size",
    "--generation-backend": "generation_backend",
    "--judge-backend": "judge_backend",
    "--judge-model": "judge_model",
    "--judge-base-url": "judge_base_url",
    "--api-key-env": "api_key_env",
    "--concurrency": "concurrency",
    "--timeout": "timeout_s",
    "--max-retries": "max_retries",
    "--order-seed": "order_seed",
}
"""Short flags of :class:`AlpacaEvalConfig` fields; every field is also settable with ``--set key=value``."""


def _build_parser() -> argparse.ArgumentParser:
    parser = config_parser(
        "python -m evaluation.alpaca_eval",
        "AlpacaEval 2.0 (weighted pairwise judge, win rate and length-controlled win rate) of a causal LM.",
        AlpacaEvalConfig,
        CONFIG_ALIASES,
        title="AlpacaEval config fields (set any with --set key=value; values are YAML):",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--baseline-model", help="with baseline=null: the reference policy whose outputs are the baseline ('vs SFT')"
    )
    return parser


def _check_inputs(parser: argparse.ArgumentParser, args: argparse.Namespace, cfg: AlpacaEvalConfig) -> AlpacaEvalData:
    """Every model spec and data file, before any model is loaded; returns the loaded data."""
    if cfg.baseline is None and not args.baseline_model:
        parser.error("--baseline-model is required when the baseline is the reference policy (baseline=null)")
    if cfg.baseline is not None and args.baseline_model:
        parser.error("--baseline-model only applies with baseline=null (a file or hub baseline is given)")
    local_judge = cfg.resolved_judge_model if cfg.judge_backend == "local" else None
    specs = [("--model", args.model), ("--baseline-model", args.baseline_model), ("--judge-model", local_judge)]
    check_model_specs(parser, specs)
    try:
        return load_alpaca_eval_data(cfg)
    except (ValueError, FileNotFoundError) as err:
        parser.error(f"AlpacaEval data: {err}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: every flag, model spec, data file and the judge key are checked before any model
    is loaded."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    cfg, model_id = parse_config(parser, args, AlpacaEvalConfig)
    device = resolve_device(parser, args.device)
    check_generation_backend(parser, cfg.generation_backend, device)
    data = _check_inputs(parser, args, cfg)
    judge: PairJudge | None = None
    if cfg.judge_backend == "openai":
        try:
            judge = OpenAIPairJudge.from_config(cfg)
        except JudgeError as err:
            parser.error(str(err))

    baseline_path = None
    if args.baseline_model:
        baseline_name = model_name(args.baseline_model)
        baseline_path = write_alpaca_outputs(
            args.baseline_model, args.dtype, cfg, args.out / "baseline", baseline_name, device=device, data=data
        )
    outputs = write_alpaca_outputs(args.model, args.dtype, cfg, args.out, model_id, device=device, data=data)
    judge = judge or build_pair_judge(cfg, device=device)
    try:
        result = score_outputs(outputs, cfg, args.out, baseline_path=baseline_path, judge=judge, data=data)
    except JudgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        judge.close()
    print(format_scores(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
