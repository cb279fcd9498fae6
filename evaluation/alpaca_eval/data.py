"""AlpacaEval data in AlpacaEval's own formats: instructions / model outputs and annotations, and where to find them.

* Model outputs (and the instruction files, which are model outputs of the baseline) are a JSON list of
  ``{"instruction", "output", "generator", "dataset"}`` objects, as ``alpaca_eval_gpt4_baseline.json`` on the hub and
  the ``model_outputs.json`` files ``alpaca_eval evaluate --model_outputs`` reads.
* Annotations are a JSON list with ``instruction``, ``output_1`` / ``generator_1`` (the baseline), ``output_2`` /
  ``generator_2`` (the evaluated model), ``annotator`` and ``preference`` in [1, 2] (1: baseline preferred, 2: model
  preferred, 1.5: tie), as ``alpaca_eval`` writes its ``annotations.json``; our own fields (``raw_completion``,
  ``swapped``, ``order_seed``, ``p_first``) ride along and ``alpaca_eval`` ignores them.

Every row is validated; a malformed file raises ``ValueError`` naming the file, row and field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.options import HUB

HUB_REPO_ID = "tatsu-lab/alpaca_eval"
HUB_REPO_TYPE = "dataset"
HUB_FILE = "alpaca_eval_gpt4_baseline.json"
"""The 805 instructions with GPT-4 Turbo's outputs: AlpacaEval 2.0's evaluation set and its baseline."""
BUNDLED_FILE = Path(__file__).resolve().parents[1] / "data" / "alpaca_eval_instructions.json"
OUTPUT_FIELDS = ("instruction", "output", "generator", "dataset")
ANNOTATION_FIELDS = ("instruction", "output_1", "generator_1", "output_2", "generator_2", "annotator", "preference")


@dataclasses.dataclass(frozen=True)
class ModelOutput:
    """One row of a model-outputs file."""

    instruction: str
    output: str
    generator: str
    dataset: str

    def as_row(self) -> dict[str, str]:
        """The JSON object AlpacaEval reads."""
        return dataclasses.asdict(self)


def resolve_source(source: str | None, what: str) -> Path:
    """Turn an instructions / baseline source into a local file.

    Args:
        source: ``None`` (the bundled instructions), ``"hub"`` (``alpaca_eval_gpt4_baseline.json`` from the
            ``tatsu-lab/alpaca_eval`` dataset repository) or a path.
        what: Name of the setting, for error messages.

    Raises:
        FileNotFoundError: The path does not exist, or the hub file cannot be fetched.
    """
    if source is None:
        return BUNDLED_FILE
    if source == HUB:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(HUB_REPO_ID, HUB_FILE, repo_type=HUB_REPO_TYPE))
        except Exception as err:  # network, offline mode, missing file: all end the same way for the user
            raise FileNotFoundError(
                f"{what}: could not fetch {HUB_FILE!r} from the Hugging Face dataset {HUB_REPO_ID!r} "
                f"({type(err).__name__}: {err}). Pass a local copy of the file instead, or allow network access."
            ) from err
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file not found: {path}")
    return path


def _read_json_list(path: Path) -> list[Any]:
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: expected a non-empty JSON list of objects, got {type(rows).__name__}")
    return rows


def load_model_outputs(path: Path, *, require_output: bool = True) -> list[ModelOutput]:
    """Read a model-outputs (or instructions) file.

    Args:
        path: The JSON file.
        require_output: Every row needs a string ``output`` (False for instruction-only files, whose missing
            ``output`` / ``generator`` / ``dataset`` read as empty strings).

    Raises:
        ValueError: Naming the row and field that is malformed.
    """
    outputs: list[ModelOutput] = []
    for i, row in enumerate(_read_json_list(path)):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {i} is a {type(row).__name__}, expected an object")
        instruction = row.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"{path}: row {i}: 'instruction' must be a non-empty string")
        if require_output and not isinstance(row.get("output"), str):
            raise ValueError(f"{path}: row {i}: 'output' must be a string")
        for field in ("generator", "dataset"):
            if not isinstance(row.get(field, ""), str):
                raise ValueError(f"{path}: row {i}: {field!r} must be a string")
        outputs.append(
            ModelOutput(instruction, row.get("output", ""), row.get("generator", ""), row.get("dataset", ""))
        )
    return outputs


def write_model_outputs(path: Path, outputs: Sequence[ModelOutput]) -> Path:
    """Write a model-outputs JSON file (AlpacaEval's format); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([o.as_row() for o in outputs], indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_annotations(path: Path) -> list[dict[str, Any]]:
    """Read an annotations file (ours or ``alpaca_eval``'s).

    Raises:
        ValueError: A row lacks a field of :data:`ANNOTATION_FIELDS`, or its preference is neither null/NaN nor a
            number in [1, 2] (``alpaca_eval`` also writes 0 for a tie in discrete modes; it reads as 1.5 here).
    """
    rows = _read_json_list(path)
    for i, row in enumerate(rows):
        missing = [f for f in ANNOTATION_FIELDS if not isinstance(row, dict) or f not in row]
        if missing:
            raise ValueError(f"{path}: row {i}: missing {missing}")
        row["preference"] = check_preference(row["preference"], f"{path}: row {i}")
    return rows


def check_preference(value: Any, where: str) -> float:
    """A preference as a float in [1, 2] or NaN (no judgment); 0 (a discrete tie) reads as 1.5."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: preference must be a number in [1, 2], got {value!r}")
    value = float(value)
    if value == 0:
        return 1.5
    if not math.isnan(value) and not 1 <= value <= 2:
        raise ValueError(f"{where}: preference must lie in [1, 2], got {value}")
    return value


def write_annotations(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write annotations as a JSON list (NaN preferences as null, which ``alpaca_eval`` reads as missing)."""
    clean = [{**row, "preference": None if _is_nan(row["preference"]) else row["preference"]} for row in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _is_nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def match_baseline(
    instructions: Sequence[ModelOutput], baseline: Sequence[ModelOutput], what: str
) -> list[ModelOutput]:
    """The baseline's output for every instruction, in the instructions' order.

    Raises:
        ValueError: An instruction has no baseline output.
    """
    by_instruction = {b.instruction: b for b in baseline}
    missing = [i.instruction for i in instructions if i.instruction not in by_instruction]
    if missing:
        raise ValueError(
            f"{what}: no baseline output for {len(missing)} of {len(instructions)} instructions, e.g. "
            f"{missing[0][:80]!r}"
        )
    return [by_instruction[i.instruction] for i in instructions]
