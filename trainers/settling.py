"""A trial's length set by when its verdict settles: shorter from ``train.min_steps``, longer by
``train.extend_until_settled``.

The trainer is given ``max_steps + extend_until_settled`` steps (with an extension, a constant learning-rate
schedule, so no step before ``max_steps`` changes, :class:`trainers.config.TrainConfig`); this callback evaluates at
``max_steps`` and stops at the first held-out evaluation from ``min_steps`` (default ``max_steps``) on whose verdict
has settled (:func:`trainers.verdicts.judge_behaviour`): a settled trial trains at most its planned steps and an
unsettled one at most the budget more.
"""

from __future__ import annotations

from transformers import TrainerCallback

from trainers.protocol import HELD_OUT_ACCURACY
from trainers.trl_trainer import CollapseCallback
from trainers.verdicts import VerdictConfig, stops_at


class SettleCallback(TrainerCallback):
    """Stop training at the first settled held-out evaluation at or after ``from_step``.

    Args:
        planned_steps: The trial's ``max_steps`` (always evaluated).
        from_step: The first step a settled verdict may stop the trial at (``min_steps``, else ``max_steps``).
        collapse: The trial's :class:`CollapseCallback`, whose history holds every evaluation so far.
        n_pairs: Held-out pairs each evaluation averages over.
        config: The verdict thresholds.
    """

    def __init__(
        self, planned_steps: int, from_step: int, collapse: CollapseCallback, n_pairs: int, config: VerdictConfig
    ) -> None:
        self.planned_steps = planned_steps
        self.from_step = from_step
        self.collapse = collapse
        self.n_pairs = n_pairs
        self.config = config

    def on_step_end(self, args, state, control, **kwargs):
        """The planned end is always evaluated, whatever ``eval_steps``."""
        if state.global_step == self.planned_steps:
            control.should_evaluate = True

    def on_evaluate(self, args, state, control, **kwargs):
        """From ``from_step`` on, stop once the verdict has settled (or there is nothing to judge)."""
        if state.global_step < self.from_step:
            return
        evaluations = [h for h in self.collapse.history if HELD_OUT_ACCURACY in h]
        if stops_at(evaluations, self.n_pairs, self.config):
            control.should_training_stop = True
