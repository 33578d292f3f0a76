"""The noise across a pool of units at one optimizee step: the units' gradients ``g_i``, the
updates ``U(g_i)`` the optimizer would apply to them, and the centres the noise is measured
from (gradient noise ``g_i - g_ref``, update noise ``U(g_i) - u_ref``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from l2o_lightning.dynamics.per_sample import UnitGroup, grouped_pool_gradients
from l2o_lightning.optimizees import MLP

# the centre of the update noise: the mean of the units' updates, or the update of their mean gradient
Reference = Literal["mean_update", "update_of_mean"]
REFERENCES = ("mean_update", "update_of_mean")


@dataclass(frozen=True)
class Noise:
    """What the noise probes see at one step.

    Attributes:
        grads: unit gradients ``g_i``, ``[M, D]`` (optimizee layout).
        grad_ref: their mean ``g_ref = (1/M) sum_i g_i``, ``[D]`` (every unit counts once,
            a ragged last minibatch too).
        updates: ``U(g_i)``, the updates the optimizer would apply, ``[M, D']`` (in the
            optimizer's parameter order; the optimizee layout during meta-training).
        update_of_mean: ``U(g_ref)``, ``[D']``.
    """

    grads: Tensor
    grad_ref: Tensor
    updates: Tensor
    update_of_mean: Tensor

    def update_ref(self, reference: Reference) -> Tensor:
        """The centre ``u_ref`` of the update noise ``U(g_i) - u_ref``, ``[D']``:

        - ``mean_update``: ``u_ref = (1/M) sum_i U(g_i)``, so the noise is the spread of the
          updates themselves (the paper's centring).
        - ``update_of_mean``: ``u_ref = U(g_ref)``, so the noise is each update's deviation
          from the one the whole pool's gradient would give. A nonlinear rule (Adam, Lion,
          an L2O) has ``U(g_ref) != mean_i U(g_i)``; that offset is added to every row and
          inflates the noise. SGD's rule is affine in ``g``, so both centres agree.
        """
        return self.updates.mean(0) if reference == "mean_update" else self.update_of_mean


def pool_noise(
    model: MLP, theta: Tensor, pool: Sequence[UnitGroup], rule: Callable[[Tensor], Tensor]
) -> Noise:
    """The :class:`Noise` of ``pool`` at ``theta`` (``[D]``): ``g_i`` the gradient of unit ``i``
    (:func:`~l2o_lightning.dynamics.per_sample.grouped_pool_gradients`), ``g_ref = (1/M) sum_i g_i``,
    and ``U(g_i)``, ``U(g_ref)`` from one call of ``rule`` (gradient rows ``[N, D]`` -> the
    updates ``[N, D']``) on the ``M + 1`` rows."""
    grads = grouped_pool_gradients(model, theta, pool)  # [M, D]
    grad_ref = grads.mean(0)
    ups = rule(torch.cat([grads, grad_ref[None]]))  # [M + 1, D']
    return Noise(grads, grad_ref, ups[:-1], ups[-1])
