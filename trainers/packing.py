"""Shared-prefix, padding-free forward of preference pairs: one packed row per batch instead of a padded
``[chosen; rejected]`` batch.

TRL's concatenated forward runs every pair twice, ``prompt + chosen`` and ``prompt + rejected``, each padded to the
batch's longest sequence. Chosen and rejected share their prompt, so here each pair becomes one *segment*
``prompt + chosen + rejected`` and the segments of a batch are laid end to end in one row, without padding:

* position ids restart the rejected tokens at the prompt's length, so every token sits at the position it has in
  its own sequence (``prompt + chosen`` or ``prompt + rejected``);
* the attention mask lets a token see only earlier tokens of its own segment, and never lets a rejected token see
  a chosen one, so every token sees exactly the context it has in its own sequence;
* the log-prob of a completion token is read from the hidden state of the token before it in its own sequence:
  the last prompt token for the first chosen *and* the first rejected token.

The result equals TRL's concatenated forward up to float rounding (``tests/trainers/test_packing.py``; within 1e-4 per
sequence in fp32) with the prompt run once and no padding (arXiv 2410.20305 measures the same sharing). Pairs are
packed from the very batch TRL's collator builds, after its truncation (``max_length``, ``truncation_mode``), so
truncation is TRL's by construction; a pair whose two sequences kept different prompt tokens (``keep_end`` cut them
differently) is packed as two plain segments without sharing.

The mask goes to the model as a ready 4D mask, which transformers' ``create_causal_mask`` passes through as is
(``masking_utils._preprocess_mask_arguments``): a boolean mask for SDPA (on CPU and CUDA), an additive float mask for
eager attention. transformers' own packed-sequence support cannot express it: it infers block-causal masks from
``position_ids`` that restart at 0 (``find_packed_sequence_indices``), which would cut the rejected tokens off their
prompt. Flash attention takes no custom mask at all; FlexAttention takes one as a ``BlockMask`` but runs on CPU only
through ``torch.compile`` (a compile of about a minute for every new row length here, and no faster than SDPA at
these sizes), and a window cannot be expressed for sliding-window layers: such models keep TRL's path
(:func:`unsupported_reason`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from accelerate.utils import extract_model_from_parallel
from trl.kernels import ChunkedLogProbFunction
from trl.models.utils import _ForwardRedirection
from trl.trainer.utils import maybe_gather_lm_head_ctx

MASKED_ATTENTION = ("sdpa", "eager")
"""Attention implementations that take a custom 4D mask (boolean for SDPA, additive float for eager)."""
SHARED_PREFIX_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
"""Model types whose decoder takes ``position_ids`` (RoPE) and builds its mask with ``create_causal_mask``, so a
custom 4D mask and restarted positions reach every layer unchanged, and whose LM head is a plain projection (no logit
scaling or soft-capping). SmolLM2 and the tiny test model are ``llama`` (tested); the others share its decoder code."""
_LOGPROB_CHUNK = 32768  # vocabulary columns per LM-head tile, as TRL's fused head
PROMPT, CHOSEN, REJECTED = 0, 1, 2
"""Branch ids of a segment's tokens: the mask keeps a rejected token from seeing a chosen one."""


@dataclass(frozen=True)
class TokenCounts:
    """Token counts of one batch of ``B`` pairs, for throughput telemetry (:mod:`trainers.telemetry`).

    TRL's batch is ``[chosen; rejected]``, ``2B`` rows right-padded to the longest, ``L`` columns; pair ``i`` has
    ``p_i`` prompt tokens and ``c_i`` / ``r_i`` completion tokens after truncation. Then ``real = sum(2 p_i + c_i +
    r_i)``, ``padded = 2B L``, and the packed row holds ``real - shared`` tokens, ``shared = sum(p_i)`` over the
    pairs whose two sequences kept the same prompt (all of them unless ``keep_end`` cut them differently).

    Attributes:
        real: Non-pad tokens of TRL's ``[chosen; rejected]`` batch (every prompt counted twice).
        padded: Tokens of that batch padding included: what TRL's padded concatenated forward computes.
        forward: Tokens of the forward actually run, padding included: ``padded`` unpacked, the packed row's length
            (``real - shared``, no padding) packed.
        shared: Prompt tokens the packed row holds once instead of twice (0 when not packed).
    """

    real: int
    padded: int
    forward: int
    shared: int = 0

    @property
    def computed(self) -> int:
        """Non-pad tokens the forward actually run processed: ``real - shared``."""
        return self.real - self.shared

    @property
    def padding(self) -> int:
        """Pad tokens the forward actually run processed: ``forward - computed`` (0 packed)."""
        return self.forward - self.computed


@dataclass(frozen=True)
class PackedPairs:
    """A batch of ``B`` pairs packed into one row of ``T`` tokens; ``N`` completion tokens are scored.

    Attributes:
        input_ids: Token ids, shape ``(1, T)``.
        position_ids: Each token's position in its own sequence, shape ``(1, T)``.
        segment_ids: Segment of each token (one per shared pair, two per unshared one), shape ``(T,)``.
        branch_ids: :data:`PROMPT`, :data:`CHOSEN` or :data:`REJECTED` for each token, shape ``(T,)``.
        score_index: Row position whose next-token distribution scores each completion token, shape ``(N,)``.
        score_targets: The completion token each of those positions scores, shape ``(N,)``.
        score_sequence: The sequence each scored token belongs to, ``i`` for chosen ``i`` and ``B + i`` for rejected
            ``i`` (TRL's ``[chosen; rejected]`` order), shape ``(N,)``.
        score_slot: The token's rank among its sequence's scored tokens, shape ``(N,)``.
        pairs: ``B``.
        counts: :class:`TokenCounts` of the batch.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    branch_ids: torch.Tensor
    score_index: torch.Tensor
    score_targets: torch.Tensor
    score_sequence: torch.Tensor
    score_slot: torch.Tensor
    pairs: int
    counts: TokenCounts


def padded_counts(attention_mask: torch.Tensor) -> TokenCounts:
    """:class:`TokenCounts` of an unpacked batch (TRL's ``attention_mask``, shape ``(2B, L)``)."""
    return TokenCounts(real=int(attention_mask.sum()), padded=attention_mask.numel(), forward=attention_mask.numel())


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why ``model`` cannot run the shared-prefix forward (``None`` when it can).

    Args:
        model: The policy, bare or wrapped (DDP, DeepSpeed).
    """
    module = extract_model_from_parallel(model)
    config = module.config
    if getattr(module, "peft_config", None) is not None:
        return "a PEFT model (prompt-learning adapters prepend virtual tokens the packed row has no room for)"
    if config.model_type not in SHARED_PREFIX_FAMILIES:
        return (
            f"model type {config.model_type!r} is not one whose decoder is known to take a custom 4D mask and "
            f"restarted position ids ({', '.join(sorted(SHARED_PREFIX_FAMILIES))})"
        )
    attention = config._attn_implementation
    if attention not in MASKED_ATTENTION:
        return f"attention {attention!r} takes no custom 4D mask (the shared prefix needs one of {MASKED_ATTENTION})"
    layer_types = getattr(config, "layer_types", None) or ()
    windowed = [kind for kind in layer_types if kind != "full_attention"]
    if windowed or (not layer_types and getattr(config, "sliding_window", None) is not None):
        return "sliding-window attention layers (a custom mask would drop their window)"
    return None


def pack_pairs(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor) -> PackedPairs:
    """Pack TRL's padded ``[chosen; rejected]`` batch into one row, one segment per pair.

    Args:
        input_ids: TRL's collated ids, chosen rows then rejected rows, right-padded, shape ``(2B, L)``.
        attention_mask: 1 on real tokens (a prefix of every row), shape ``(2B, L)``.
        completion_mask: 1 on completion tokens (the real tokens after the prompt), shape ``(2B, L)``.

    Returns:
        The :class:`PackedPairs`, on the device of ``input_ids``.

    Raises:
        ValueError: If the batch is not laid out as TRL's ``DataCollatorForPreference`` lays it out.
    """
    rows, width = input_ids.shape
    device = input_ids.device
    # One copy to the host (one sync on an accelerator); the row is built there and copied back.
    layout = torch.stack((input_ids, attention_mask.to(input_ids.dtype), completion_mask.to(input_ids.dtype)))
    input_ids, attention_mask, completion_mask = layout.cpu()
    lengths_t = attention_mask.sum(dim=1)
    prompts_t = lengths_t - completion_mask.sum(dim=1)
    columns = torch.arange(width)
    real = columns < lengths_t[:, None]
    if rows % 2 or not torch.equal(attention_mask.bool(), real):
        raise ValueError(
            "expected TRL's right-padded [chosen; rejected] batch: an even number of rows, real tokens first"
        )
    if not torch.equal(completion_mask.bool(), real & (columns >= prompts_t[:, None])):
        raise ValueError(
            "expected each row's completion tokens to follow its prompt tokens, as TRL's collator puts them"
        )
    ids, lengths, prompts = input_ids.tolist(), lengths_t.tolist(), prompts_t.tolist()
    row = _Row()
    pairs = rows // 2
    for pair in range(pairs):
        c, r = pair, pairs + pair
        prompt = prompts[c]
        if prompt == prompts[r] and ids[c][:prompt] == ids[r][:prompt]:
            row.add(ids[c][: lengths[c]], prompt, c, ids[r][prompt : lengths[r]], r)
        else:  # keep_end truncation kept different prompt tokens: two plain segments
            row.add(ids[c][: lengths[c]], prompt, c)
            row.add(ids[r][: lengths[r]], prompts[r], r, branch=REJECTED)
    counts = TokenCounts(real=sum(lengths), padded=rows * width, forward=len(row.ids), shared=row.shared)
    return row.packed(pairs, counts, device)


class _Row:
    """The packed row under construction: tokens, their positions, segments and branches, and what is scored."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.positions: list[int] = []
        self.segments: list[int] = []
        self.branches: list[int] = []
        self.score: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])
        self.shared = 0
        self._segment = 0

    def add(
        self,
        sequence: list[int],
        prompt: int,
        sequence_id: int,
        rejected: list[int] | None = None,
        rejected_id: int = 0,
        branch: int = CHOSEN,
    ) -> None:
        """Append one segment: ``sequence`` (``prompt`` prompt tokens, then completion tokens of ``branch``) and, for
        a shared pair, the ``rejected`` completion after it, positioned and scored as if it followed the prompt."""
        start = len(self.ids)
        completion = len(sequence) - prompt
        self._extend(sequence, range(len(sequence)), [PROMPT] * prompt + [branch] * completion)
        # Token t of a sequence is scored from position t - 1 (TRL's shift: a sequence's first token is not scored).
        first = max(prompt, 1)
        self._score(sequence_id, [start + t - 1 for t in range(first, len(sequence))], sequence[first:])
        if rejected is not None:
            after = len(self.ids)
            self._extend(rejected, range(prompt, prompt + len(rejected)), [REJECTED] * len(rejected))
            # Rejected token k follows the prompt: the first is scored from the last prompt token, not the last chosen.
            first = 0 if prompt else 1
            sources = [start + prompt - 1 if k == 0 else after + k - 1 for k in range(first, len(rejected))]
            self._score(rejected_id, sources, rejected[first:])
            self.shared += prompt
        self._segment += 1

    def _extend(self, ids: list[int], positions: range, branches: list[int]) -> None:
        self.ids += ids
        self.positions += positions
        self.segments += [self._segment] * len(ids)
        self.branches += branches

    def _score(self, sequence_id: int, sources: list[int], targets: list[int]) -> None:
        index, target, sequence, slot = self.score
        index += sources
        target += targets
        sequence += [sequence_id] * len(sources)
        slot += range(len(sources))

    def packed(self, pairs: int, counts: TokenCounts, device: torch.device) -> PackedPairs:
        def tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)

        index, targets, sequence, slot = (tensor(v) for v in self.score)
        return PackedPairs(
            input_ids=tensor(self.ids)[None],
            position_ids=tensor(self.positions)[None],
            segment_ids=tensor(self.segments),
            branch_ids=tensor(self.branches),
            score_index=index,
            score_targets=targets,
            score_sequence=sequence,
            score_slot=slot,
            pairs=pairs,
            counts=counts,
        )


def shared_prefix_mask(packed: PackedPairs, attention: str, dtype: torch.dtype) -> torch.Tensor:
    """The 4D attention mask of a packed row: causal within a segment, rejected tokens blind to chosen ones.

    Args:
        packed: The packed row.
        attention: The model's attention implementation (one of :data:`MASKED_ATTENTION`).
        dtype: The model's dtype (for eager attention's additive mask).

    Returns:
        Shape ``(1, 1, T, T)``: boolean (``True`` = attend) for SDPA, ``0`` / dtype minimum for eager.
    """
    segment, branch = packed.segment_ids, packed.branch_ids
    position = torch.arange(segment.numel(), device=segment.device)
    allowed = (segment[:, None] == segment[None, :]) & (position[:, None] >= position[None, :])
    allowed &= ~((branch[:, None] == REJECTED) & (branch[None, :] == CHOSEN))
    allowed = allowed[None, None]
    if attention == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    return allowed


def sequence_logps(model: torch.nn.Module, packed: PackedPairs) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs of every chosen and rejected completion from one forward over the packed row.

    The policy runs through its own (wrapper's) forward, so DDP, DeepSpeed and ZeRO-3 see an ordinary forward call
    (TRL's ``_ForwardRedirection``, as TRL's own fused losses do); the LM head scores only the completion tokens,
    with TRL's chunked log-prob kernel (no ``(N, vocab)`` logits kept).

    Args:
        model: The policy, bare or wrapped; it must pass :func:`unsupported_reason`.
        packed: The packed batch (:func:`pack_pairs`).

    Returns:
        ``(logps, tokens)``: per-sequence sums of completion-token log-probs and the number of scored completion
        tokens, both shape ``(2B,)`` in TRL's ``[chosen; rejected]`` order.
    """
    module = extract_model_from_parallel(model)
    mask = shared_prefix_mask(packed, module.config._attn_implementation, module.dtype)
    inputs = {
        "input_ids": packed.input_ids,
        "attention_mask": mask,
        "position_ids": packed.position_ids,
        "score_index": packed.score_index,
        "score_targets": packed.score_targets,
    }
    forward = functools.partial(_scored_token_logps, module)
    token_logps = forward(**inputs) if module is model else _ForwardRedirection()(model, module, forward, **inputs)
    sequences = 2 * packed.pairs
    width = packed.score_slot.numel() and int(packed.score_slot.max()) + 1
    per_token = token_logps.new_zeros(sequences, max(width, 1))
    # Distinct (sequence, slot) cells: a deterministic scatter, unlike index_add on CUDA.
    per_token = per_token.index_put((packed.score_sequence, packed.score_slot), token_logps)
    tokens = torch.bincount(packed.score_sequence, minlength=sequences)
    return per_token.sum(dim=1), tokens


def _scored_token_logps(
    module: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    score_index: torch.Tensor,
    score_targets: torch.Tensor,
) -> torch.Tensor:
    """Backbone over the packed row, then log-probs of the scored tokens only, shape ``(N,)``."""
    hidden = module.base_model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    head = module.get_output_embeddings()
    hidden = hidden.reshape(-1, hidden.size(-1))[score_index].to(head.weight.device)
    with maybe_gather_lm_head_ctx(head.weight, head.bias):
        # TRL's fused head with its defaults (temperature 1, no soft-capping or logit scale in these families).
        return ChunkedLogProbFunction.apply(
            hidden,
            head.weight,
            head.bias,
            score_targets.to(head.weight.device),
            1.0,
            _LOGPROB_CHUNK,
            None,
            1.0,
            ("log_probs",),
        )[0]
