"""``python -m evaluation.mt_bench``: MT-Bench single-answer grading of one model, from the command line.

Usage::

    python -m evaluation.mt_bench --model PATH --out DIR [--judge-backend openai ...] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from evaluation.cli import (
    add_model_arguments,
    check_generation_backend,
    check_model_specs,
    parse_config,
    resolve_device,
)
from evaluation.judge_client import Judge, JudgeError, OpenAIJudge
from evaluation.mt_bench.config import EvalConfig
from evaluation.mt_bench.judge import build_judge
from evaluation.mt_bench.pipeline import format_scores, load_mt_bench_data, score_answers, write_mt_bench_answers
from trainers.typed_config import config_parser

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
    "--generation-backend": "generation_backend",
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
    add_model_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: every flag and data file is validated before any model is loaded."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    cfg, model_id = parse_config(parser, args, EvalConfig)
    device = resolve_device(parser, args.device)
    check_generation_backend(parser, cfg.generation_backend, device)
    local_judge = cfg.resolved_judge_model if cfg.judge_backend == "local" else None
    check_model_specs(parser, [("--model", args.model), ("--judge-model", local_judge)])
    try:
        data = load_mt_bench_data(cfg)
    except (ValueError, FileNotFoundError) as err:
        parser.error(f"MT-Bench data: {err}")
    judge: Judge | None = None
    if cfg.judge_backend == "openai":
        try:
            judge = OpenAIJudge.from_config(cfg)
        except JudgeError as err:
            parser.error(str(err))
    try:
        # The policy (or its vLLM engine) is gone before a local judge takes the device.
        answers = write_mt_bench_answers(args.model, args.dtype, cfg, args.out, model_id, device=device, data=data)
        judge = judge or build_judge(cfg, device=device)
        result = score_answers(answers, cfg, args.out, model_id, judge=judge, data=data)
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
