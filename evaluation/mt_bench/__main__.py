"""``python -m evaluation.mt_bench``: MT-Bench single-answer grading of one model, from the command line.

Usage::

    python -m evaluation.mt_bench --model PATH --out DIR [--judge-backend openai ...] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from evaluation.config import EvalConfig
from evaluation.judges import Judge, JudgeError, OpenAIJudge, build_judge
from evaluation.mt_bench import format_scores, load_mt_bench_data, run_mt_bench, safe_name
from trainers.typed_config import apply_overrides, build, config_parser, overrides_from_args

CONFIG_ALIASES = {
    "--judge-backend": "judge_backend",
    "--judge-model": "judge_model",
    "--judge-base-url": "judge_base_url",
    "--api-key-env": "api_key_env",
    "--mt-bench-questions": "questions",
    "--judge-prompts": "judge_prompts",
    "--reference-answers": "reference_answers",
    "--categories": "categories",
    "--limit": "limit",
    "--max-new-tokens": "max_new_tokens",
    "--batch-size": "generation_batch_size",
    "--seed": "seed",
    "--judge-max-tokens": "judge_max_tokens",
    "--judge-batch-size": "judge_batch_size",
    "--concurrency": "concurrency",
    "--timeout": "timeout_s",
    "--max-retries": "max_retries",
    "--lenient-rating-range": "!strict_rating_range",
    "--no-force-rating": "!local_judge_force_rating",
}
"""Short flags of :class:`EvalConfig` fields; every field is also settable with ``--set key=value``."""


def _build_parser() -> argparse.ArgumentParser:
    parser = config_parser(
        "python -m evaluation.mt_bench",
        "MT-Bench single-answer grading (FastChat llm_judge) of a causal LM.",
        EvalConfig,
        CONFIG_ALIASES,
        title="MT-Bench config fields (set any with --set key=value; values are YAML):",
    )
    parser.add_argument("--model", required=True, help="model spec: 'embedded', a checkpoint dir or a hub id")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--model-id", help="name of the evaluated model (default: derived from --model)")
    parser.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda:1', ...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: every flag and data file is validated before any model is loaded."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = build(EvalConfig, apply_overrides({}, overrides_from_args(args), EvalConfig))
    except ValueError as err:
        parser.error(str(err))
    model_id = args.model_id or safe_name(Path(args.model.rstrip("/")).name)
    if safe_name(model_id) != model_id:
        parser.error(f"--model-id must consist of letters, digits, '.', '_' or '-', got {model_id!r}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a directory")

    import torch

    from trainers.models import EMBEDDED_MODEL, load_model, load_tokenizer, resolve_model_path

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError as err:
        parser.error(f"--device: {err}")
    specs = [("--model", args.model)]
    if cfg.judge_backend == "local":
        specs.append(("--judge-model", cfg.resolved_judge_model))
    for flag, spec in specs:
        if spec != EMBEDDED_MODEL:
            try:
                resolve_model_path(spec)
            except (ValueError, FileNotFoundError) as err:
                parser.error(f"{flag}: {err}")
    try:
        load_mt_bench_data(cfg)
    except (ValueError, FileNotFoundError) as err:
        parser.error(f"MT-Bench data: {err}")
    judge: Judge | None = None
    if cfg.judge_backend == "openai":
        try:
            judge = OpenAIJudge.from_config(cfg)
        except JudgeError as err:
            parser.error(str(err))

    model = load_model(args.model).to(device)
    tokenizer = load_tokenizer(args.model)
    if judge is None:
        judge = build_judge(cfg, device=device)
    try:
        result = run_mt_bench(model, tokenizer, cfg, args.out, model_id, judge=judge)
    except JudgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if isinstance(judge, OpenAIJudge):
            judge.close()
    print(format_scores(result, model_id, judge.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
