"""The counters of a meta-training run and their accounting: trajectory rounds, truncations,
divergences and the ``meta/epoch_loss`` epochs (:class:`MetaProgress`). Saved in every
checkpoint so a resumed run goes on counting where it stopped; no Lightning here:
:class:`~l2o_lightning.meta.MetaTrainModule` keeps one and logs what it returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor


@dataclass
class MetaProgress:
    """The counters of a meta-training run (saved in its checkpoints).

    Attributes:
        seed: seed of the trajectories' initialisations (:func:`~l2o_lightning.unroll.task_generator`).
        rounds: trajectory rounds started; in each round every task starts a trajectory.
        batches: training batches (truncations) processed, diverged ones included; the
            logging step of a truncation is ``batches - 1`` while it runs.
        diverged: truncations skipped because they diverged; ``diverged_in_a_row`` counts
            the current streak.
        trajectory_loss: ``sum_t L_t`` of the current round so far (mean over its tasks).
        epoch_loss, epoch_rounds: the summed ``trajectory_loss`` of the rounds ended in the
            current epoch (``inf`` once one of them diverged), and their number.
        last_epoch_loss: the last ``meta/epoch_loss`` logged (``None`` before the first epoch
            ends), shown to the callbacks at every truncation: a checkpoint monitoring it finds it
            even when diverged truncations have shifted epoch ends off its interval, and after a
            resume.

    The accounting methods take ``tasks_total`` (trajectories per round, over all tasks and
    processes) and ``epoch_trajectories`` (ended trajectories per ``meta/epoch_loss``).
    """

    seed: int
    rounds: int = 0
    batches: int = 0
    diverged: int = 0
    diverged_in_a_row: int = 0
    trajectory_loss: float = 0.0
    epoch_loss: float = 0.0
    epoch_rounds: int = 0
    last_epoch_loss: float | None = None

    def count_trajectory_loss(
        self, step_losses: Tensor, trajectory_ended: bool, tasks_total: int, epoch_trajectories: int
    ) -> dict[str, float]:
        """Add a finished truncation's ``sum_t L_t`` (mean over tasks) to its trajectory's; when
        the trajectory ends, :meth:`end_trajectory` counts it in the epoch."""
        self.trajectory_loss += step_losses.detach().sum(0).mean().item()
        if not trajectory_ended:
            return {}
        return self.end_trajectory(self.trajectory_loss, tasks_total, epoch_trajectories)

    def end_trajectory(
        self, trajectory_loss: float, tasks_total: int, epoch_trajectories: int
    ) -> dict[str, float]:
        """Count a trajectory round's ``sum_t L_t`` in its epoch (``inf`` for a round that
        diverged, so an epoch with a diverged round is never the lowest); ``{"meta/epoch_loss":
        mean over the epoch's rounds}`` when the epoch ends, else ``{}``."""
        self.epoch_loss += trajectory_loss
        self.epoch_rounds += 1
        self.trajectory_loss = 0.0
        if self.epoch_rounds * tasks_total < epoch_trajectories:
            return {}
        epoch_loss = self.epoch_loss / self.epoch_rounds
        self.epoch_loss, self.epoch_rounds = 0.0, 0
        return {"meta/epoch_loss": epoch_loss}

    def count_diverged(self, tasks_total: int, epoch_trajectories: int) -> dict[str, float]:
        """Count a diverged truncation, whose round ends with an infinite loss
        (:meth:`end_trajectory`)."""
        self.diverged += 1
        self.diverged_in_a_row += 1
        return self.end_trajectory(math.inf, tasks_total, epoch_trajectories)
