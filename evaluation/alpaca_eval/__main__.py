"""``python -m evaluation.alpaca_eval``: AlpacaEval 2.0 of one model against a baseline, from the command line.

Usage::

    python -m evaluation.alpaca_eval --model PATH --out DIR --baseline-model embedded      # vs SFT, offline
    python -m evaluation.alpaca_eval --model PATH --out DIR --instructions hub --baseline hub --judge-backend openai
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from evaluation.alpaca_eval import format_scores, load_alpaca_eval_data, run_alpaca_eval, write_outputs
from evaluation.alpaca_eval_config import AlpacaEvalConfig
from evaluation.alpaca_eval_judge import OpenAIPairJudge, PairJudge, build_pair_judge
from evaluation.judges import JudgeError
from evaluation.mt_bench import safe_name
from trainers.typed_config import apply_overrides, build, config_parser, overrides_from_args

CONFIG_ALIASES = {
    "--instructions": "instructions",
    "--baseline": "baseline",
    "--limit": "limit",
    "--max-new-tokens": "max_new_tokens",
    "--batch-size": "generation_batch_size",
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
    parser.add_argument("--model", required=True, help="model spec: 'embedded', a checkpoint dir or a hub id")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--model-id", help="generator name of the evaluated model (default: derived from --model)")
    parser.add_argument(
        "--baseline-model", help="with baseline=null: the reference policy whose outputs are the baseline ('vs SFT')"
    )
    parser.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda:1', ...")
    return parser


def _check_inputs(parser: argparse.ArgumentParser, args: argparse.Namespace, cfg: AlpacaEvalConfig) -> None:
    """Every model spec and data file, before any model is loaded."""
    from trainers.models import EMBEDDED_MODEL, resolve_model_path

    if cfg.baseline is None and not args.baseline_model:
        parser.error("--baseline-model is required when the baseline is the reference policy (baseline=null)")
    if cfg.baseline is not None and args.baseline_model:
        parser.error("--baseline-model only applies with baseline=null (a file or hub baseline is given)")
    specs = [("--model", args.model), ("--baseline-model", args.baseline_model)]
    if cfg.judge_backend == "local":
        specs.append(("--judge-model", cfg.resolved_judge_model))
    for flag, spec in specs:
        if spec and spec != EMBEDDED_MODEL:
            try:
                resolve_model_path(spec)
            except (ValueError, FileNotFoundError) as err:
                parser.error(f"{flag}: {err}")
    try:
        load_alpaca_eval_data(cfg)
    except (ValueError, FileNotFoundError) as err:
        parser.error(f"AlpacaEval data: {err}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: every flag, model spec, data file and the judge key are checked before any model
    is loaded."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = build(AlpacaEvalConfig, apply_overrides({}, overrides_from_args(args), AlpacaEvalConfig))
    except ValueError as err:
        parser.error(str(err))
    model_id = args.model_id or safe_name(Path(args.model.rstrip("/")).name)
    if safe_name(model_id) != model_id:
        parser.error(f"--model-id must consist of letters, digits, '.', '_' or '-', got {model_id!r}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a directory")
    _check_inputs(parser, args, cfg)
    judge: PairJudge | None = None
    if cfg.judge_backend == "openai":
        try:
            judge = OpenAIPairJudge.from_config(cfg)
        except JudgeError as err:
            parser.error(str(err))

    import torch

    from trainers.models import load_model, load_tokenizer

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    baseline_path = None
    if args.baseline_model:
        base = load_model(args.baseline_model).to(device)
        base_id = safe_name(Path(args.baseline_model.rstrip("/")).name)
        baseline_path = write_outputs(base, load_tokenizer(args.baseline_model), cfg, args.out / "baseline", base_id)
        del base
    model = load_model(args.model).to(device)
    judge = judge or build_pair_judge(cfg, device=device)
    try:
        result = run_alpaca_eval(
            model, load_tokenizer(args.model), cfg, args.out, model_id, baseline_path=baseline_path, judge=judge
        )
    except JudgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        judge.close()
    print(format_scores(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
