"""What meta-training shows of the optimizee steps it takes, and who listens.

Meta-training trains optimizees inside its own training step, where Lightning's hooks do not
see them. At every optimizee step it publishes an :class:`OptimizeeStep` to each callback that
is a :class:`MetaTrainingStepListener` (the probes of :mod:`l2o_lightning.callbacks`): the
module knows no probe, a probe no meta-training internals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from torch import Tensor

if TYPE_CHECKING:
    import lightning as L

# gradient rows [N, D] (optimizee layout) -> the updates [N, D'] the optimizer would apply
RowUpdates = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class OptimizeeStep:
    """One optimizee step of meta-training: the first task's of its truncation.

    Attributes:
        position: meta-training's running count of optimizee steps before this one (over
            trajectories and truncations), the x-axis the probes log at.
        params: ``theta``, the parameters the step starts from, ``[D]`` (optimizee layout).
        grad: the minibatch gradient at ``theta``, ``[D]``.
        update: ``u``, the update the LSTM applied (``theta + u`` is the next point), ``[D]``.
        rule: gradient rows ``[N, D]`` -> the updates ``[N, D]`` the LSTM would apply to them
            from its state before this step (``rule(grad[None])[0] == update``); it uses the
            LSTM's current weights, so it holds while the step is shown (the meta-optimizer
            changes them after the truncation).
    """

    position: int
    params: Tensor
    grad: Tensor
    update: Tensor
    rule: RowUpdates


@runtime_checkable
class MetaTrainingStepListener(Protocol):
    """A callback that sees meta-training's optimizee steps."""

    def on_meta_training_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, step: OptimizeeStep
    ) -> None:
        """Called at every optimizee step of meta-training, on every process; ``pl_module.optimizee``
        is the optimizee's model."""


def step_listeners(trainer: L.Trainer) -> list[MetaTrainingStepListener]:
    """The trainer's callbacks that listen to meta-training's optimizee steps."""
    return [callback for callback in trainer.callbacks if isinstance(callback, MetaTrainingStepListener)]
