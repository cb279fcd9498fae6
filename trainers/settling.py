"""Training a trial past ``max_steps`` while its verdict has not settled (``train.extend_until_settled``).

The trainer is given ``max_steps + extend_until_settled`` steps (a constant learning-rate schedule, so no step before
``max_steps`` changes, :class:`trainers.config.TrainConfig`); this callback evaluates at ``max_steps`` and stops at
the first held-out evaluation from there on whose verdict has settled (:func:`trainers.verdicts.judge_behaviour`),
so a settled trial trains exactly its planned steps and an unsettled one at most the budget more.
"""

from __future__ import annotations

from transformers import TrainerCallback

from trainers.protocol import HELD_OUT_ACCURACY
from trainers.trl_trainer import CollapseCallback
from trainers.verdicts import VerdictConfig, judge_behaviour


class SettleCallback(TrainerCallback):
    """Stop training at the first settled held-out evaluation at or after ``planned_steps``.

    Args:
        planned_steps: The trial's ``max_steps``.
        collapse: The trial's :class:`CollapseCallback`, whose history holds every evaluation so far.
        n_pairs: Held-out pairs each evaluation averages over.
        config: The verdict thresholds.
    """

    def __init__(self, planned_steps: int, collapse: CollapseCallback, n_pairs: int, config: VerdictConfig) -> None:
        self.planned_steps = planned_steps
        self.collapse = collapse
        self.n_pairs = n_pairs
        self.config = config

    def on_step_end(self, args, state, control, **kwargs):
        """The planned end is always evaluated, whatever ``eval_steps``."""
        if state.global_step == self.planned_steps:
            control.should_evaluate = True

    def on_evaluate(self, args, state, control, **kwargs):
        """From the planned end on, stop once the verdict has settled (or there is nothing to judge)."""
        if state.global_step < self.planned_steps:
            return
        evaluations = [h for h in self.collapse.history if HELD_OUT_ACCURACY in h]
        verdict = judge_behaviour(evaluations, self.n_pairs, self.config)
        if verdict is None or verdict.settled:
            control.should_training_stop = True
