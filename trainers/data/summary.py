"""What happens to a user's preference rows before training: read, dropped as malformed, dropped or truncated by
``max_length``, used — computed with TRL's own tokenisation, before any cluster work.

TRL 1.16's ``DPOTrainer`` tokenises ``prompt``, ``prompt + chosen`` and ``prompt + rejected`` (with the chat template
for conversational rows, an EOS appended to standard ones), drops every pair whose prompt alone fills ``max_length``
("fully truncated": no completion token would be left) and truncates the rest to ``max_length``. A real dataset at a
small ``max_length`` can lose most of its pairs that way, silently; the summary says so, and
:meth:`DataSummary.check` refuses a run that has too few pairs left for one optimizer step or no held-out pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
from transformers import PreTrainedTokenizerBase
from trl.data_utils import is_conversational
from trl.trainer.dpo_trainer import _tokenize

from trainers.data import PreferenceData


@dataclass(frozen=True)
class SplitSummary:
    """One split after TRL's tokenisation.

    Attributes:
        pairs: Pairs loaded (after malformed rows were dropped).
        dropped_by_length: Pairs TRL drops because their prompt alone fills ``max_length``.
        truncated_by_length: Pairs kept but cut to ``max_length`` (chosen or rejected side).
        longest: Tokens of the longest ``prompt + completion``: a ``max_length`` that keeps every pair whole.
    """

    pairs: int
    dropped_by_length: int
    truncated_by_length: int
    longest: int

    @property
    def used(self) -> int:
        """Pairs a trial trains or evaluates on."""
        return self.pairs - self.dropped_by_length


@dataclass(frozen=True)
class DataSummary:
    """Rows read, dropped and used, per split."""

    train: SplitSummary
    eval: SplitSummary
    malformed: dict[str, int]
    max_length: int

    def describe(self) -> str:
        """The lines a user sees in a run and in ``--dry-run``."""
        malformed = ", ".join(f"{n} {reason}" for reason, n in sorted(self.malformed.items())) or "none"
        lines = [f"data: dropped as malformed (both splits): {malformed}"]
        for name, split in (("train", self.train), ("held-out", self.eval)):
            lines.append(
                f"data: {name}: {split.pairs} pairs read, {split.dropped_by_length} dropped (prompt fills "
                f"max_length={self.max_length}), {split.truncated_by_length} truncated, {split.used} used; "
                f"max_length={split.longest} would keep every pair whole"
            )
        return "\n".join(lines)

    def check(self, pairs_per_step: int) -> None:
        """Refuse data that cannot run: fewer train pairs than one optimizer step needs, or no held-out pair.

        Raises:
            ValueError: Naming the counts and the fix.
        """
        if self.train.used < pairs_per_step:
            raise ValueError(
                f"only {self.train.used} train pairs remain ({self.train.dropped_by_length} of {self.train.pairs} "
                f"dropped by max_length={self.max_length}) but one optimizer step needs {pairs_per_step} "
                f"(per_device_batch_size x grad_accum x num_workers); raise train.max_length (>= {self.train.longest} "
                "keeps every pair) or use more rows"
            )
        if self.eval.used == 0:
            raise ValueError(
                f"no held-out pair remains ({self.eval.dropped_by_length} of {self.eval.pairs} dropped by "
                f"max_length={self.max_length}): the verdicts need held-out pairs; raise train.max_length "
                f"(>= {self.eval.longest} keeps every pair)"
            )


def _split_summary(dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> SplitSummary:
    dropped = truncated = longest = 0
    eos = tokenizer.eos_token or ""
    for example in dataset:
        if is_conversational(example):
            prompt = len(_tokenize(tokenizer, example["prompt"], add_generation_prompt=True)["input_ids"])
            full = [
                len(_tokenize(tokenizer, example["prompt"] + example[side])["input_ids"])
                for side in ("chosen", "rejected")
            ]
        else:
            prompt = len(_tokenize(tokenizer, example["prompt"])["input_ids"])
            full = []
            for side in ("chosen", "rejected"):
                completion = example[side] if example[side].endswith(eos) else example[side] + eos
                full.append(len(_tokenize(tokenizer, example["prompt"] + completion)["input_ids"]))
        longest = max(longest, *full)
        if prompt >= max_length:
            dropped += 1
        elif max(full) > max_length:
            truncated += 1
    return SplitSummary(len(dataset), dropped, truncated, longest)


def summarize_data(data: PreferenceData, tokenizer: PreTrainedTokenizerBase, max_length: int) -> DataSummary:
    """The :class:`DataSummary` of loaded preference data at a ``max_length``.

    Args:
        data: The loaded pairs (malformed rows already dropped and counted).
        tokenizer: The policy's tokenizer (with its chat template).
        max_length: ``train.max_length``.
    """
    return DataSummary(
        train=_split_summary(data.train, tokenizer, max_length),
        eval=_split_summary(data.eval, tokenizer, max_length),
        malformed=dict(data.dropped),
        max_length=max_length,
    )
