"""Preference data for DPO-family training: loading, validation, normalisation and the bundled set.

:func:`load_preference_data` turns one of three kinds of source into a train/eval pair of
:class:`datasets.Dataset` objects in the *explicit-prompt* preference format that TRL 1.16's
``DPOTrainer`` consumes (``trl/trainer/dpo_trainer.py``, ``_prepare_dataset``): columns ``prompt``,
``chosen`` and ``rejected``, either all chat-message lists (conversational, the chat template applies) or
all plain strings (standard):

* ``"embedded"`` (:data:`EMBEDDED_DATA`): verifiable preference pairs made by
  :func:`generate_verifiable_pairs` at load time (arithmetic, unit conversion, sorting, letter counting,
  decimal comparison, weekday and date arithmetic). The chosen answer is correct, the rejected one is a
  plausible mistake (off-by-one, wrong unit factor, one adjacent swap, ...). Train and held-out rows ask
  different questions, so held-out preference accuracy measures generalisation, not recall.
* ``"embedded-long"`` (:data:`EMBEDDED_LONG_DATA`): the same idea with worked answers of 60-191 tokens
  (:func:`generate_long_form_pairs`: running sums, balances, long multiplication, unit-conversion chains, ordered
  lists, multiplication tables, date schedules), whose rejected answer carries one verifiable mistake through
  its later steps, so that per-pair margins can reach tens of nats.
* a HuggingFace hub dataset name (production: ``argilla/dpo-mix-7k``) or a local dataset folder, read with
  :func:`datasets.load_dataset`; its ``test`` split, when present, is the eval split.
* a local ``.jsonl`` / ``.json`` / ``.parquet`` file, either *explicit* (``prompt``, ``chosen``,
  ``rejected`` as strings or message lists) or *implicit* (only ``chosen`` and ``rejected``): message lists
  sharing their leading turns (the prompt is split off with TRL's :func:`trl.data_utils.extract_prompt`)
  or Anthropic HH-RLHF transcripts ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` (Bai et al. 2022), parsed
  into multi-turn user/assistant prompt messages and the final assistant reply.

Every row is validated before any training. A bad row raises :class:`PreferenceDataError` naming the
source, the row (the 1-based line for JSON lines) and the field; with ``on_bad_rows="drop"`` it is dropped
and counted under its reason in :attr:`PreferenceData.dropped` instead. Problems with a whole file
(undecodable ``.json``, broken JSON array, unreadable Parquet, no rows, every row dropped) always raise.

The package's modules, bottom up: :mod:`~trainers.data.schema` (columns, features, errors, the result type),
:mod:`~trainers.data.synthetic` (the bundled verifiable pairs), :mod:`~trainers.data.long_form` (the bundled
long-answer pairs), :mod:`~trainers.data.sources` (file and hub
readers), :mod:`~trainers.data.rows` (row validation and normalisation, the HH-RLHF parser, the bad-row
policy), :mod:`~trainers.data.splits` (held-out carve-out, subsets, datasets) and :mod:`~trainers.data.load`
(:func:`load_preference_data`). The public names are re-exported here.
"""

from trainers.data.load import ON_BAD_ROWS, load_preference_data
from trainers.data.long_form import (
    EMBEDDED_LONG_DATA,
    EMBEDDED_LONG_EVAL_SIZE,
    EMBEDDED_LONG_SEED,
    EMBEDDED_LONG_TRAIN_SIZE,
    LONG_TASK_NAMES,
    generate_long_form_pairs,
)
from trainers.data.rows import MESSAGE_ROLES, parse_hh_transcript
from trainers.data.schema import COLUMNS, DROP_REASONS, PreferenceData, PreferenceDataError
from trainers.data.sources import FILE_SUFFIXES
from trainers.data.synthetic import (
    EMBEDDED_DATA,
    EMBEDDED_EVAL_SIZE,
    EMBEDDED_SEED,
    EMBEDDED_TRAIN_SIZE,
    TASK_NAMES,
    generate_verifiable_pairs,
)

__all__ = [
    "COLUMNS",
    "DROP_REASONS",
    "EMBEDDED_DATA",
    "EMBEDDED_EVAL_SIZE",
    "EMBEDDED_LONG_DATA",
    "EMBEDDED_LONG_EVAL_SIZE",
    "EMBEDDED_LONG_SEED",
    "EMBEDDED_LONG_TRAIN_SIZE",
    "EMBEDDED_SEED",
    "EMBEDDED_TRAIN_SIZE",
    "FILE_SUFFIXES",
    "LONG_TASK_NAMES",
    "MESSAGE_ROLES",
    "ON_BAD_ROWS",
    "TASK_NAMES",
    "PreferenceData",
    "PreferenceDataError",
    "generate_long_form_pairs",
    "generate_verifiable_pairs",
    "load_preference_data",
    "parse_hh_transcript",
]
