"""AlpacaEval 2.0 (Dubois et al., 2024, arXiv:2404.04475): weighted pairwise win rate and LC win rate of a model.

Pipeline of :func:`run_alpaca_eval`:

1. load and validate the instructions and, unless the baseline is a policy to generate, the baseline's outputs
   (:mod:`evaluation.alpaca_eval.data`);
2. answer every instruction with the policy (greedy) and write ``<out_dir>/model_outputs.json`` (AlpacaEval's
   model-outputs format); a policy baseline (the sweep's reference model, "vs SFT") is written the same way;
3. judge every (baseline, model) pair in AlpacaEval 2.0's weighted mode (:mod:`evaluation.alpaca_eval.judge`), the two
   outputs shown in an order drawn per instruction from ``order_seed`` (position bias), and write
   ``<out_dir>/annotations.json`` (AlpacaEval's format: ``output_1`` baseline, ``output_2`` model, ``preference``);
4. compute the win rate, its standard error and the LC win rate (:mod:`evaluation.alpaca_eval.metrics`) and write
   ``<out_dir>/alpaca_eval_scores.json``, which says how LC was computed (``lc_method``).

Command line::

    python -m evaluation.alpaca_eval --model ./checkpoint --baseline-model embedded --out runs/ae
    python -m evaluation.alpaca_eval --model ./checkpoint --out runs/ae --instructions hub --baseline hub \\
        --judge-backend openai
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evaluation.alpaca_eval.config import AlpacaEvalConfig
from evaluation.alpaca_eval.data import (
    ModelOutput,
    load_model_outputs,
    match_baseline,
    resolve_source,
    write_annotations,
    write_model_outputs,
)
from evaluation.alpaca_eval.judge import PairJudge, build_pair_judge, render_pair_prompt
from evaluation.alpaca_eval.metrics import alpaca_metrics
from evaluation.generation.checkpoint import open_generator
from evaluation.generation.hf import ChatGenerator, hf_generator

logger = logging.getLogger(__name__)

METRIC_PREFIX = "alpaca_eval"
LC_WIN_RATE = "length_controlled_winrate"
WIN_RATE = "win_rate"
STANDARD_ERROR = "standard_error"
N_INVALID = "n_invalid"
METRIC_KEYS = (LC_WIN_RATE, WIN_RATE, STANDARD_ERROR, "discrete_win_rate", "n_total", N_INVALID, "avg_length")
"""Numeric metrics logged as ``alpaca_eval/<key>`` (MLflow, ``alpaca_eval_scores.json``)."""
SCORES_FILENAME = "alpaca_eval_scores.json"
OUTPUTS_FILENAME = "model_outputs.json"
ANNOTATIONS_FILENAME = "annotations.json"
REAL_INSTRUCTION_COUNT = 805
"""AlpacaEval's instruction count: a file of this many rows is taken for the real set (its difficulty table applies)."""


@dataclasses.dataclass(frozen=True)
class AlpacaEvalData:
    """Validated inputs of one run.

    Attributes:
        instructions: Selected instructions (``limit`` applied), in file order.
        baseline: The baseline's outputs, one per instruction, or None when the baseline is a policy to generate.
        hub_index: Each instruction's position in its file (AlpacaEval's ``index`` into its difficulty table).
        real: Whether the instruction file is AlpacaEval's 805.
    """

    instructions: list[ModelOutput]
    baseline: list[ModelOutput] | None
    hub_index: list[int]
    real: bool


@dataclasses.dataclass(frozen=True)
class AlpacaEvalResult:
    """Scores of one run (percent) and its files.

    Attributes:
        metrics: Everything :func:`evaluation.alpaca_eval.metrics.alpaca_metrics` returns (``lc_method`` included).
        outputs_path: The model-outputs file.
        annotations_path: The annotations file.
    """

    metrics: dict[str, Any]
    outputs_path: Path
    annotations_path: Path

    @property
    def lc_win_rate(self) -> float:
        """Length-controlled win rate in percent."""
        return float(self.metrics[LC_WIN_RATE])

    @property
    def win_rate(self) -> float:
        """Win rate in percent."""
        return float(self.metrics[WIN_RATE])

    def as_metrics(self) -> dict[str, float]:
        """Flat numeric metrics ``alpaca_eval/<key>`` for every key of :data:`METRIC_KEYS`."""
        return {f"{METRIC_PREFIX}/{key}": float(self.metrics[key]) for key in METRIC_KEYS}


def load_alpaca_eval_data(cfg: AlpacaEvalConfig) -> AlpacaEvalData:
    """Load the instructions and, for a file / hub baseline, its outputs matched to them.

    Raises:
        FileNotFoundError: A file is missing or the hub download failed.
        ValueError: A file is malformed, or the baseline lacks an instruction.
    """
    rows = load_model_outputs(resolve_source(cfg.instructions, "alpaca_eval instructions"), require_output=False)
    real = len(rows) == REAL_INSTRUCTION_COUNT
    selected = rows[: cfg.limit] if cfg.limit else rows
    baseline = None
    if cfg.baseline is not None:
        baseline_rows = load_model_outputs(resolve_source(cfg.baseline, "alpaca_eval baseline"))
        baseline = match_baseline(selected, baseline_rows, "alpaca_eval baseline")
    return AlpacaEvalData(selected, baseline, list(range(len(selected))), real)


def generate_outputs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    instructions: Sequence[ModelOutput],
    generator: str,
    *,
    max_new_tokens: int,
    batch_size: int,
) -> list[ModelOutput]:
    """:func:`answer_instructions` with a loaded transformers model (the ``hf`` backend)."""
    with hf_generator(model, tokenizer, max_new_tokens=max_new_tokens, batch_size=batch_size) as generate:
        return answer_instructions(generate, instructions, generator)


def answer_instructions(
    generate: ChatGenerator, instructions: Sequence[ModelOutput], generator: str
) -> list[ModelOutput]:
    """Answer every instruction greedily through the chat template with a generation backend; rows keep each
    instruction's ``dataset``."""
    conversations = [[{"role": "user", "content": i.instruction}] for i in instructions]
    replies = generate(conversations, 0.0)
    return [ModelOutput(i.instruction, r, generator, i.dataset) for i, r in zip(instructions, replies, strict=True)]


def write_outputs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    cfg: AlpacaEvalConfig,
    out_dir: Path,
    generator: str,
    data: AlpacaEvalData | None = None,
) -> Path:
    """Generate the outputs of a loaded ``model`` and write ``<out_dir>/model_outputs.json``; a sweep runs
    :func:`evaluation.generation.checkpoint.write_alpaca_outputs`, which picks the backend. Returns the file."""
    with hf_generator(
        model, tokenizer, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.generation_batch_size
    ) as generate:
        return write_outputs_with(generate, cfg, out_dir, generator, data=data)


def write_outputs_with(
    generate: ChatGenerator, cfg: AlpacaEvalConfig, out_dir: Path, generator: str, data: AlpacaEvalData | None = None
) -> Path:
    """Answer the instructions with a generation backend and write ``<out_dir>/model_outputs.json``. Returns the
    file."""
    data = data or load_alpaca_eval_data(cfg)
    logger.info("AlpacaEval: answering %d instructions with %s", len(data.instructions), generator)
    outputs = answer_instructions(generate, data.instructions, generator)
    return write_model_outputs(Path(out_dir) / OUTPUTS_FILENAME, outputs)


def order_swapped(order_seed: int, instruction: str) -> bool:
    """Whether the model's output is shown first (``m``) for this instruction: a fair coin drawn from the seed and
    the instruction text, so the order is reproducible and independent of the file's row order."""
    digest = hashlib.sha256(f"{order_seed}\0{instruction}".encode()).digest()
    return digest[0] % 2 == 1


def annotate(
    data: AlpacaEvalData,
    baseline: Sequence[ModelOutput],
    outputs: Sequence[ModelOutput],
    judge: PairJudge,
    order_seed: int,
) -> list[dict[str, Any]]:
    """Judge every (baseline, model) pair and return AlpacaEval annotations.

    A pair shown swapped (model first) has ``preference = 1 + P(m)``, otherwise ``2 - P(m)``: both read as the
    probability that the model's output is better, plus one.

    Raises:
        ValueError: The model outputs do not answer the instructions.
    """
    outputs = match_baseline(data.instructions, outputs, "model outputs")
    requests, swaps = [], []
    for inst, base, out in zip(data.instructions, baseline, outputs, strict=True):
        swapped = order_swapped(order_seed, inst.instruction)
        first, second = (out.output, base.output) if swapped else (base.output, out.output)
        requests.append(render_pair_prompt(inst.instruction, first, second))
        swaps.append(swapped)
    judgments = judge.judge_pairs(requests)
    rows = []
    for k, (inst, base, out, swapped, judgment) in enumerate(
        zip(data.instructions, baseline, outputs, swaps, judgments, strict=True)
    ):
        p = judgment.p_first
        rows.append(
            {
                "instruction": inst.instruction,
                "output_1": base.output,
                "generator_1": base.generator,
                "output_2": out.output,
                "generator_2": out.generator,
                "dataset": inst.dataset,
                "annotator": judge.name,
                "preference": (1 + p if swapped else 2 - p) if math.isfinite(p) else math.nan,
                "p_first": p,
                "swapped": swapped,
                "order_seed": order_seed,
                "raw_completion": judgment.raw,
                "problem": judgment.problem,
                "hub_index": data.hub_index[k],
            }
        )
    return rows


def score_outputs(
    outputs_path: Path,
    cfg: AlpacaEvalConfig,
    out_dir: Path,
    *,
    baseline_path: Path | None = None,
    judge: PairJudge | None = None,
    data: AlpacaEvalData | None = None,
) -> AlpacaEvalResult:
    """Judge a model-outputs file against the baseline and score it: what a sweep runs in its driver.

    Args:
        outputs_path: The model's outputs.
        cfg: Evaluation settings.
        out_dir: Receives ``annotations.json`` and ``alpaca_eval_scores.json``.
        baseline_path: The baseline's outputs when ``cfg.baseline`` is None (a generated reference policy).
        judge: Judge to use; None builds (and afterwards closes) the one ``cfg`` selects.
        data: Already loaded inputs.

    Raises:
        ValueError: No baseline, malformed files, or outputs that do not answer the instructions.
        JudgeError: The judge failed for good.
    """
    data = data or load_alpaca_eval_data(cfg)
    baseline = data.baseline
    if baseline is None:
        if baseline_path is None:
            raise ValueError("alpaca_eval.baseline is null (the reference policy): pass its outputs file")
        baseline = match_baseline(data.instructions, load_model_outputs(baseline_path), "reference policy outputs")
    own_judge = judge is None
    judge = judge or build_pair_judge(cfg)
    try:
        logger.info("AlpacaEval: judging %d pairs with %r", len(data.instructions), judge)
        rows = annotate(data, baseline, load_model_outputs(Path(outputs_path)), judge, cfg.order_seed)
    finally:
        if own_judge:
            judge.close()
    out_dir = Path(out_dir)
    annotations_path = write_annotations(out_dir / ANNOTATIONS_FILENAME, rows)
    metrics = alpaca_metrics(rows, real_instructions=data.real)
    result = AlpacaEvalResult(metrics, Path(outputs_path), annotations_path)
    summary = {
        "generator": rows[0]["generator_2"],
        "baseline": rows[0]["generator_1"],
        "annotator": judge.name,
        "order_seed": cfg.order_seed,
        "metrics": metrics,
    }
    (out_dir / SCORES_FILENAME).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if metrics[N_INVALID]:
        logger.warning("AlpacaEval: %d of %d judgments unusable", metrics[N_INVALID], len(rows))
    return result


def run_alpaca_eval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    cfg: AlpacaEvalConfig,
    out_dir: Path,
    generator: str,
    *,
    baseline_path: Path | None = None,
    judge: PairJudge | None = None,
) -> AlpacaEvalResult:
    """Generate ``model``'s outputs, judge them against the baseline and score them (see the module docstring)."""
    data = load_alpaca_eval_data(cfg)
    outputs_path = write_outputs(model, tokenizer, cfg, out_dir, generator, data=data)
    return score_outputs(outputs_path, cfg, out_dir, baseline_path=baseline_path, judge=judge, data=data)


def format_scores(result: AlpacaEvalResult) -> str:
    """The scores as a short plain-text table, with how LC was computed."""
    m = result.metrics
    return "\n".join(
        [
            "AlpacaEval 2.0",
            f"  length-controlled win rate  {m[LC_WIN_RATE]:6.2f} %",
            f"  win rate                    {m[WIN_RATE]:6.2f} % (standard error {m[STANDARD_ERROR]:.2f})",
            f"  judged pairs                {int(m['n_total'])} (unusable, left out: {int(m[N_INVALID])})",
            f"  LC method: {m['lc_method']}",
            f"  outputs:     {result.outputs_path}",
            f"  annotations: {result.annotations_path}",
        ]
    )


ALPACA_SEED = 0
"""Engine seed of AlpacaEval generation: its decoding is greedy, so the seed changes nothing."""


def write_alpaca_outputs(
    model: str,
    dtype: str,
    cfg: AlpacaEvalConfig,
    out_dir: Path,
    generator: str,
    *,
    device: str | None = None,
    data: AlpacaEvalData | None = None,
) -> Path:
    """Answer the AlpacaEval instructions (greedy) with a saved model and write ``<out_dir>/model_outputs.json``.

    Args:
        model: A model spec (a trial's saved policy directory, the reference model's spec).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        cfg: AlpacaEval settings; ``generation_backend`` picks transformers or vLLM.
        out_dir: Output directory.
        generator: Name recorded in every output row.
        device: See :func:`evaluation.generation.checkpoint.open_generator`.
        data: Already loaded instructions (else loaded here, before any model).

    Returns:
        The model-outputs file.
    """
    data = data or load_alpaca_eval_data(cfg)
    with open_generator(model, dtype, cfg, seed=ALPACA_SEED, device=device) as generate:
        return write_outputs_with(generate, cfg, Path(out_dir), generator, data=data)
