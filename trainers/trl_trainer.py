"""A thin TRL ``DPOTrainer`` subclass whose loss comes from the registry, plus collapse monitoring.

The subclass replaces only TRL's loss dispatch (``_compute_loss``) and the gradient clipping hook, so that

* the per-example loss is ``trainers.losses.LOSSES[name].fn`` on the policy / reference log-probs,
* every step logs the collapse statistics under TRL's metric names (one host sync for all of them),
* the pre-clip gradient norm comes with a count of non-finite gradient values, and
* non-finite values are classified as numerical or genuine (:func:`trainers.collapse.classify_non_finite`), and
* with ``shared_prefix`` (the default) the policy and reference log-probs come from one padding-free forward in which
  chosen and rejected share their prompt (:mod:`trainers.packing`) instead of TRL's padded concatenated forward, and
* every step logs its throughput (``perf/*``: non-pad tokens/s, padding fraction, tokens saved, MFU;
  :mod:`trainers.telemetry`).

Everything else (tokenisation, truncation and collation, the precomputed reference log-probs, optimisation,
DeepSpeed) is TRL's and transformers' own.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator

import torch
from torch.profiler import record_function
from transformers import TrainerCallback
from trl import DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer import dpo_trainer as trl_dpo_trainer

from trainers.collapse import DivergenceMonitor, Verdict, classify_non_finite
from trainers.config import LossConfig
from trainers.losses import compute_loss, get_loss, mix_statistics
from trainers.packing import TokenCounts, pack_pairs, padded_counts, sequence_logps, unsupported_reason
from trainers.protocol import Metric
from trainers.telemetry import ThroughputMeter, non_embedding_parameters, resolve_peak_tflops

logger = logging.getLogger(__name__)

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
TOKENISED_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
"""The columns TRL's dataset preparation adds: a dataset that has them is already tokenised."""
PROFILE_RANGES = ("dlrml/forward", "dlrml/loss", "dlrml/metrics", "dlrml/clip_grad_norm")
"""Labels of the step phases this trainer adds to any ``torch.profiler`` trace (``bench/profile_step.py``)."""
BETA_MIX_MODULE = "dlrml_beta_mix"
"""Name of the learnable ``beta_mix`` submodule on the policy model (``dlrml_learnable``)."""
_NON_MODEL_KEYS = frozenset({"completion_mask", *REF_COLUMNS})


def _has_reference(dataset) -> bool:
    """Whether a dataset already carries reference log-probs (the sweep's shared pass attached them)."""
    return all(column in (getattr(dataset, "column_names", None) or ()) for column in REF_COLUMNS)


@contextlib.contextmanager
def _without_model_hash() -> Iterator[None]:
    """TRL's ``DPOTrainer.__init__`` without its hash of the whole model.

    With ``precompute_ref_log_probs=True`` TRL hashes every weight on every rank (minutes for a 7B model in host
    RAM) only to name the cache file of its own reference pass. Data that already carries the reference log-probs
    never reaches that pass (:meth:`RegistryDPOTrainer._precompute_ref_logps` returns it as is), so the hash would be
    unused. Turning ``precompute_ref_log_probs`` off instead would make TRL load a second, reference model. TRL
    looks ``hash_module`` up in its module's namespace at call time; it is restored on exit.
    """
    original = trl_dpo_trainer.hash_module
    trl_dpo_trainer.hash_module = lambda module: "dlrml-shared-reference"
    try:
        yield
    finally:
        trl_dpo_trainer.hash_module = original


def _shared_prefix_usable(model) -> bool:
    """Whether ``model`` takes the shared-prefix forward; if not, one log line says why."""
    reason = unsupported_reason(model)
    if reason is not None:
        logger.warning("shared-prefix forward off, TRL's padded concatenated forward instead: %s", reason)
    return reason is None


class LearnableBetaMix(torch.nn.Module):
    """``beta_mix = exp(log_value)``: a positive scalar trained with the policy, as a submodule *of the policy*.

    As part of the model it is whatever DDP / DeepSpeed manage: DDP broadcasts it at wrap time and all-reduces its
    gradient, ZeRO partitions it with the other weights, so every rank keeps one ``beta_mix``. (A parameter outside
    the model is neither all-reduced under DDP, so ranks drift apart, nor known to ZeRO-3: ``partition_numel``
    fails.) It is a module rather than a bare parameter so that the loss reads it through a forward call: ZeRO-3
    gathers a partitioned parameter only inside a forward of the module that owns it.

    Args:
        beta_mix: Initial value (> 0).
    """

    def __init__(self, beta_mix: float) -> None:
        super().__init__()
        # Shape (1,), not (): DeepSpeed broadcasts parameters as byte views, which a 0-d tensor cannot take.
        self.log_value = torch.nn.Parameter(torch.tensor([math.log(beta_mix)]))

    def forward(self) -> torch.Tensor:
        """The current ``beta_mix``, a differentiable 0-d tensor."""
        return self.log_value.exp().squeeze(0)

    @classmethod
    def attach(cls, model: torch.nn.Module, beta_mix: float) -> LearnableBetaMix:
        """Register a fresh learnable ``beta_mix`` on ``model`` as :data:`BETA_MIX_MODULE`, kept out of checkpoints.

        A module an earlier trial left on the same model object is replaced, so every trial starts from its own
        ``beta_mix``. ``save_pretrained`` drops its key, so a saved policy loads with ``from_pretrained`` like any
        other checkpoint of its architecture.
        """
        module = cls(beta_mix).to(next(model.parameters()).device)
        model.add_module(BETA_MIX_MODULE, module)
        ignored = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
        model._keys_to_ignore_on_save = ignored | {f"{BETA_MIX_MODULE}.log_value"}
        return module


class RegistryDPOTrainer(DPOTrainer):
    """``DPOTrainer`` optimising a registry loss.

    Args:
        *args: Passed to ``DPOTrainer`` (``args`` must set ``precompute_ref_log_probs=True`` unless the datasets
            already carry ``ref_chosen_logps`` / ``ref_rejected_logps`` columns).
        loss: The loss and its hyper-parameters.
        shared_prefix: Score pairs with the shared-prefix, padding-free forward (:mod:`trainers.packing`) where the
            model takes it; otherwise (or when the model cannot) with TRL's padded concatenated forward.
        peak_tflops: Peak TFLOP/s of one accelerator, for ``perf/mfu``; ``None``: looked up by the CUDA device's name
            (:func:`~trainers.telemetry.peak_tflops_for`), no MFU where it is not known.
        **kwargs: Passed to ``DPOTrainer``.

    Attributes:
        shared_prefix: Whether the shared-prefix forward is in use.
        last_token_counts: :class:`~trainers.packing.TokenCounts` of the last batch scored (telemetry).
        throughput: The callback that logs each step's ``perf/*`` metrics.
    """

    def __init__(
        self, *args, loss: LossConfig, shared_prefix: bool = True, peak_tflops: float | None = None, **kwargs
    ) -> None:
        self.loss_config = loss
        self.loss_spec = get_loss(loss.name)
        self.beta_mix: LearnableBetaMix | None = None
        model = kwargs["model"] if "model" in kwargs else args[0]
        if "beta_mix" in self.loss_spec.learnable:
            self.beta_mix = LearnableBetaMix.attach(model, loss.beta_mix)
        self.shared_prefix = shared_prefix and _shared_prefix_usable(model)
        self.last_token_counts: TokenCounts | None = None
        self._last_logps: tuple[torch.Tensor, ...] | None = None
        train, held_out = kwargs.get("train_dataset"), kwargs.get("eval_dataset")
        shared_reference = _has_reference(train) and (held_out is None or _has_reference(held_out))
        with _without_model_hash() if shared_reference else contextlib.nullcontext():
            super().__init__(*args, **kwargs)
        accelerator = self.accelerator
        self.throughput = ThroughputMeter(
            self._metrics["train"],
            non_embedding_parameters(self.model),
            resolve_peak_tflops(peak_tflops, "bf16" if self.args.bf16 else "fp32", accelerator.device),
            devices=accelerator.num_processes,
            reference_forward=not self.args.precompute_ref_log_probs,
            gather=accelerator.gather,
            device=accelerator.device,
        )
        self.add_callback(self.throughput)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name: str):
        """Pairs that come tokenised (by the sweep's shared reference pass, with this tokenizer and max length) are
        not tokenised again; anything else goes through TRL's own preparation."""
        if all(column in (dataset.column_names or ()) for column in TOKENISED_COLUMNS):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        """Reference log-probs that came with the data (shared by a whole sweep) are used as they are."""
        if _has_reference(dataset):
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)

    def create_optimizer(self, model=None):
        """TRL/transformers' optimiser, with a learnable ``beta_mix`` moved into its own parameter group.

        transformers puts every model parameter (the learnable ``beta_mix`` included, as it lives on the model) in
        the policy's groups; it gets its own learning rate and no weight decay instead. DeepSpeed builds its
        engine around this same optimiser when its config names none.
        """
        optimizer = super().create_optimizer(model)
        if self.beta_mix is not None:
            log_value = self.beta_mix.log_value
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if p is not log_value]
            optimizer.add_param_group({"params": [log_value], "lr": self.loss_config.beta_mix_lr, "weight_decay": 0.0})
        return optimizer

    def loss_hparams(self) -> dict[str, float | torch.Tensor]:
        """Keyword hyper-parameters of the loss; a learnable ``beta_mix`` is a differentiable 0-d tensor."""
        hparams: dict[str, float | torch.Tensor] = dict(self.loss_config.hparams())
        if self.beta_mix is not None:
            hparams["beta_mix"] = self.beta_mix()
        return hparams

    def _sequence_logps(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence log-probs of ``[chosen; rejected]`` and their completion-token counts, both shape ``(2B,)``."""
        if self.shared_prefix:
            packed = pack_pairs(inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
            self.last_token_counts = packed.counts
            return sequence_logps(model, packed)
        self.last_token_counts = padded_counts(inputs["attention_mask"])
        completion_mask = inputs["completion_mask"]
        shift_mask = completion_mask[..., 1:]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        # One forward over the concatenated [chosen; rejected] batch; TRL's fused LM head returns per-token log-probs
        # of the labels (0 on masked positions) without materialising the logits.
        outputs = model(**model_kwargs, use_cache=False, labels=labels, fused_lm_head=True)
        return outputs.log_probs[:, -shift_mask.size(1) :].sum(dim=1), shift_mask.sum(dim=1)

    def compute_ref_log_probs(self, model, inputs):
        """TRL's reference pass over one batch, through the shared-prefix forward when it is in use."""
        if not self.shared_prefix:
            return super().compute_ref_log_probs(model, inputs)
        packed = pack_pairs(inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            self.accelerator.autocast(),
        ):
            logps, _ = sequence_logps(model, packed)
        return logps.chunk(2)

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        with record_function(PROFILE_RANGES[0]):
            logps, n_tokens = self._sequence_logps(model, inputs)
        if mode == "train":
            self.throughput.add(self.last_token_counts)
        with record_function(PROFILE_RANGES[1]):
            ref_logps = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).to(logps.dtype)
            if self.loss_spec.logp_reduction == "mean":
                per_token = n_tokens.clamp(min=1)
                loss_logps, loss_ref_logps = logps / per_token, ref_logps / per_token
            else:
                loss_logps, loss_ref_logps = logps, ref_logps
            pi_c, pi_r = loss_logps.chunk(2)
            ref_c, ref_r = loss_ref_logps.chunk(2)
            hparams = self.loss_hparams()
            out = compute_loss(self.loss_spec.name, pi_c, pi_r, ref_c, ref_r, **hparams)
            loss = out.losses.mean()
        self._last_logps = tuple(t.detach() for t in (pi_c, pi_r, ref_c, ref_r))
        with record_function(PROFILE_RANGES[2]):
            self._record_metrics(mode, logps, ref_logps, n_tokens, out, hparams)
        if return_outputs:
            raise NotImplementedError("RegistryDPOTrainer computes no logits for compute_metrics")
        return loss

    def _record_metrics(self, mode, logps, ref_logps, n_tokens, out, hparams) -> None:
        """Append this batch's collapse statistics to TRL's metric buffer with a single host sync.

        Args:
            mode: ``"train"`` or ``"eval"``.
            logps: Policy sequence log-probs ``[chosen; rejected]``, shape ``(2B,)``.
            ref_logps: Reference sequence log-probs, shape ``(2B,)``.
            n_tokens: Completion tokens of each sequence, shape ``(2B,)``.
            out: The loss output (per-example losses ``(B,)``, mixing coefficient ``(B,)`` or ``None``).
            hparams: The loss hyper-parameters used.
        """
        gather = self.accelerator.gather_for_metrics
        # Split [chosen; rejected] *before* gathering, as TRL does: gather_for_metrics concatenates rank by rank
        # and trims the last batch's duplicated padding per tensor, so splitting a gathered concatenation mixes
        # ranks' halves (or fails on a trimmed odd-length tensor).
        pi_c, pi_r = (gather(t) for t in logps.detach().chunk(2))
        ref_c, ref_r = (gather(t) for t in ref_logps.detach().chunk(2))
        tokens_c = gather(n_tokens.chunk(2)[0]).clamp(min=1).to(pi_c.dtype)
        losses = gather(out.losses.detach())
        # TRL's implicit rewards beta * log(pi / ref) on *sequence* log-probs, also for losses fed per-token means
        # (IPO), so that rewards/* and the held-out accuracy mean the same for every loss.
        beta_kl = self.loss_config.beta_kl
        chosen_rewards, rejected_rewards = beta_kl * (pi_c - ref_c), beta_kl * (pi_r - ref_r)
        margins = chosen_rewards - rejected_rewards
        stats = {
            Metric.REWARDS_CHOSEN: chosen_rewards.mean(),
            Metric.REWARDS_REJECTED: rejected_rewards.mean(),
            Metric.REWARDS_MARGINS: margins.mean(),
            Metric.REWARDS_ACCURACIES: (margins > 0).float().mean(),
            Metric.LOGPS_CHOSEN: pi_c.mean(),
            Metric.LOGPS_REJECTED: pi_r.mean(),
            # Sequence log-ratio to the reference over both completions: a cheap proxy of KL(pi || ref).
            Metric.KL_REF: torch.cat([pi_c - ref_c, pi_r - ref_r]).mean(),
            # The reference is the initial policy, so this is the drift of chosen log-probs since the start.
            Metric.LOGPS_CHOSEN_DRIFT: (pi_c - ref_c).mean(),
            Metric.LOGPS_CHOSEN_DRIFT_PER_TOKEN: ((pi_c - ref_c) / tokens_c).mean(),
            Metric.NAN_INF_LOSS: (~torch.isfinite(losses)).sum().float(),
        }
        if out.mix is not None:
            stats.update(mix_statistics(gather(out.mix.detach())))
        if self.beta_mix is not None:
            stats[Metric.BETA_MIX_VALUE] = hparams["beta_mix"].detach()
        values = torch.stack([v.float().reshape(()) for v in stats.values()]).tolist()
        # Plain-string keys: TRL's metric buffer and the logs it feeds to callbacks are keyed by str.
        record = dict(zip(map(str, stats), values, strict=True))
        if record[Metric.NAN_INF_LOSS] > 0:
            kind = classify_non_finite(
                self.loss_spec, hparams, self._last_logps, check_grad=False, dtype=out.losses.dtype
            )
            record[Metric.NAN_INF_GENUINE] = float(kind == "genuine")
        for key, value in record.items():
            self._metrics[mode][key].append(value)

    def _clip_grad_norm(self, model):
        """Clip as transformers does, but measure the pre-clip norm and count non-finite gradients first."""
        with record_function(PROFILE_RANGES[3]):
            return self._measure_and_clip(model)

    def _measure_and_clip(self, model):
        if self.is_deepspeed_enabled:
            # ZeRO partitions the gradients; the engine's global norm is the only view of them.
            norm = super()._clip_grad_norm(model)
            non_finite = 0.0 if math.isfinite(float(norm)) else 1.0
        else:
            params = [p for p in model.parameters() if p.grad is not None]
            grads = [p.grad for p in params]
            per_param = torch.stack(torch._foreach_norm(grads))
            norm = torch.linalg.vector_norm(per_param)
            bad_params = ~torch.isfinite(per_param)
            # Counted before clipping, which scales every gradient by max_norm / norm (all NaN for a NaN norm).
            # Counting elements is only paid for on the (rare) step whose norm is already non-finite.
            non_finite = float(sum((~torch.isfinite(g)).sum().item() for g in grads)) if bad_params.any() else 0.0
            if self.args.max_grad_norm > 0:
                torch.nn.utils.clip_grads_with_norm_(params, self.args.max_grad_norm, norm)
        self._metrics["train"][Metric.NAN_INF_GRAD.value].append(non_finite)
        if non_finite and self._last_logps is not None and not self._metrics["train"].get(Metric.NAN_INF_GENUINE.value):
            kind = classify_non_finite(
                self.loss_spec,
                self.loss_hparams(),
                self._last_logps,
                check_grad=True,
                dtype=self._last_logps[0].dtype,
            )
            self._metrics["train"][Metric.NAN_INF_GENUINE.value].append(float(kind == "genuine"))
        return norm

    def _get_grad_norm(self, model, grad_norm=None):
        """With clipping off (``max_grad_norm=0``) transformers skips :meth:`_clip_grad_norm`; measure through it."""
        if grad_norm is None:
            grad_norm = self._clip_grad_norm(model)
        return super()._get_grad_norm(model, grad_norm=grad_norm)


class CollapseCallback(TrainerCallback):
    """Feeds every logged step to a :class:`DivergenceMonitor`, stops training at divergence, keeps history.

    Args:
        monitor: The divergence monitor for this trial.
        on_metrics: Optional sink called with ``(step, metrics)`` for every logged dict (train and eval), e.g.
            a Ray Tune reporter or a printer.
    """

    def __init__(
        self,
        monitor: DivergenceMonitor,
        on_metrics: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        self.monitor = monitor
        self.on_metrics = on_metrics
        self.history: list[dict[str, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Record a logged dict; on divergence ask the trainer to stop right away."""
        if not logs:
            return
        record = {"step": state.global_step, **logs}
        self.history.append(record)
        verdict = self.monitor.update(state.global_step, logs)
        if verdict is not None and verdict.diverged:
            control.should_training_stop = True
            control.should_evaluate = False
            control.should_save = False
        if self.on_metrics is not None:
            self.on_metrics(state.global_step, record)

    @property
    def verdict(self) -> Verdict:
        """The trial's verdict so far."""
        return self.monitor.final()
