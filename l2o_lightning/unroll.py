"""The pure math of meta-training: one learned optimizee step, a truncated unroll with
its first-order meta-gradient, whole evaluation trajectories, the symmetry-breaking
regularizer (Andrychowicz et al. 2016, https://arxiv.org/abs/1606.04474; the regularizer:
Sobotka & Simanek 2024). No Lightning here: :mod:`l2o_lightning.meta` wires it.

The optimizer that takes the optimizee steps is the LSTM (an
:class:`~l2o_lightning.learned.LSTMOptimizerNet`, stepped as
:class:`~l2o_lightning.dynamics.functional_optim.L2O`) or any functional optimizer of
:mod:`l2o_lightning.dynamics.functional_optim`; the meta-gradient reaches whatever its update
depends on (the LSTM's weights, or e.g. an SGD learning rate given as a tensor)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Literal, TypedDict

import numpy as np
import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from l2o_lightning.dynamics import functional_optim
from l2o_lightning.dynamics.functional_optim import FunctionalOptimizer, detach_state
from l2o_lightning.dynamics.symmetry import symmetry_deviations
from l2o_lightning.errors import ConfigError
from l2o_lightning.learned import LSTMState
from l2o_lightning.optimizees import MLP

MetaLossKind = Literal["sum", "log_sum"]
PenaltyForm = Literal["abs_sum", "sum_abs"]
# the LSTM (its forward: (g, state) -> (u, state)) or a functional optimizer
StepOptimizer = Callable[[Tensor, LSTMState], tuple[Tensor, LSTMState]] | FunctionalOptimizer
# (params theta [tasks, D] with graph, gradient g detached, update u with graph, the optimizer
# state u was computed from) -> meta-loss term
StepHook = Callable[[Tensor, Tensor, Tensor, Any], Tensor]

@dataclass(frozen=True)
class Unroll:
    """How meta-training cuts optimizee trajectories (``model.unroll`` of a meta-training config).

    Args:
        length: optimizee steps per truncation, the meta-gradient's horizon (paper: 20); at
            least 2, since a truncation's first loss is at parameters the LSTM has not updated.
        n_iters: optimizee steps per trajectory (paper: 200); a multiple of ``length``.
        tasks_per_step: trajectories per process advanced together in every meta-step.

    >>> Unroll(length=20, n_iters=200, tasks_per_step=2).minibatches
    40
    """

    length: int = 20
    n_iters: int = 200
    tasks_per_step: int = 1

    def __post_init__(self) -> None:
        if self.length < 2:
            raise ConfigError(
                f"`model.unroll.length` must be at least 2, got {self.length}: a truncation's first loss is "
                "at parameters the LSTM has not updated yet, so one step gives no meta-gradient (paper: 20)."
            )
        if self.n_iters <= 0 or self.n_iters % self.length:
            raise ConfigError(
                f"`model.unroll.n_iters` ({self.n_iters}) must be a positive multiple of "
                f"`model.unroll.length` ({self.length}), e.g. n_iters 200 with length 20 (the paper)."
            )
        if self.tasks_per_step <= 0:
            raise ConfigError(f"`model.unroll.tasks_per_step` must be positive, got {self.tasks_per_step}.")

    @property
    def truncations(self) -> int:
        """Truncations (meta-steps) per trajectory: ``n_iters / length``."""
        return self.n_iters // self.length

    @property
    def minibatches(self) -> int:
        """Minibatches one meta-step takes: one per task and optimizee step, ``length * tasks_per_step``."""
        return self.length * self.tasks_per_step

    def minibatches_phrase(self) -> str:
        """Why a meta-step takes :attr:`minibatches`, naming the settings."""
        return (f"`model.unroll.length` x `model.unroll.tasks_per_step` = {self.length} x "
                f"{self.tasks_per_step} = {self.minibatches} minibatches")


class SymmetryReg(TypedDict, total=False):
    """The symmetry-breaking regularizer (paper Fig. 2): ``beta`` times the deviation of the
    L2O's updates from the constraints of the symmetries in ``kinds``, in ``form`` ``abs_sum``
    (``|sum_j d_j|``, the paper's) or ``sum_abs`` (``sum_j |d_j|``, the default)."""

    beta: float
    kinds: list[str]
    form: PenaltyForm


def symmetry_penalty(
    update: Tensor, params: Tensor, optimizee: MLP, kinds: list[str], beta: float,
    form: PenaltyForm = "sum_abs",
) -> Tensor:
    """``beta * sum_kinds |sum_j d_j|`` (``abs_sum``) or ``beta * sum_kinds sum_j |d_j|``
    (``sum_abs``), ``d_j = <v_j, theta_tilde_j>`` with ``v = -u``, mean over tasks;
    differentiable in ``update`` (``[tasks, D]``). The constraint vectors ``theta_tilde`` are
    built from the detached ``params``: the penalty judges the update, not the point."""
    deviations = symmetry_deviations(-update, params.detach(), optimizee.symmetry_groups(), optimizee.layout)
    return beta * sum(getattr(deviations[kind], form) for kind in kinds).mean()


def as_functional(optimizer: StepOptimizer) -> FunctionalOptimizer:
    """A functional optimizer as it is; the LSTM as :class:`functional_optim.L2O`."""
    return optimizer if isinstance(optimizer, FunctionalOptimizer) else functional_optim.L2O(optimizer)


@dataclass
class Trajectory:
    """The optimizees being trained: parameters ``[tasks, D]``, the optimizer state (the LSTM's:
    ``[num_layers, tasks, D, hidden]``) and the optimizee step reached."""

    params: Tensor
    state: Any
    step: int = 0

    def detach(self) -> Trajectory:
        """Cut the graph at a truncation boundary: no meta-gradient flows to earlier steps."""
        return Trajectory(self.params.detach(), detach_state(self.state), self.step)


def optimizee_loss_and_grad(
    optimizee: MLP, params: Tensor, x: Tensor, y: Tensor
) -> tuple[Tensor, Tensor]:
    """Minibatch loss ``[tasks]`` and its gradient ``[tasks, D]`` at ``params[tasks, D]``
    on ``x[tasks, B, 784]``, ``y[tasks, B]``; both detached from any graph."""
    grad, loss = vmap(grad_and_value(optimizee.functional_loss))(params.detach(), x, y)
    return loss, grad


def first_order_loss(loss: Tensor, grad: Tensor, params: Tensor) -> Tensor:
    """``L + <g, theta - stopgrad(theta)>``: the value of ``L`` with derivative ``g`` with
    respect to ``theta``, i.e. the meta-gradient path through the optimizee loss without
    second derivatives (and without keeping the optimizee's own graph).

    Args:
        loss: ``[tasks]`` minibatch losses at ``params``.
        grad: ``[tasks, D]`` their gradients.
        params: ``[tasks, D]`` parameters carrying the graph.
    """
    return loss + (grad * (params - params.detach())).sum(-1)


def meta_objective(step_losses: Tensor, kind: MetaLossKind) -> Tensor:
    """The meta-loss of a truncation from its step losses ``[steps, tasks]``, averaged over tasks:
    ``sum``: ``sum_t L_t``; ``log_sum``: ``log(sum_t L_t)``."""
    total = step_losses.sum(0)
    return (total.log() if kind == "log_sum" else total).mean()


def all_finite(*tensors: Tensor) -> bool:
    """Whether every entry of every tensor is finite (no NaN, no +-inf)."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def task_generator(seed: int, task: int, round_: int) -> torch.Generator:
    """The generator of trajectory ``(task, round_)``'s initialisation, seeded by hashing
    ``(seed, round_, task)`` with numpy's ``SeedSequence``: the same trajectory starts from the
    same parameters whichever process runs it and however many tasks run beside it.

    >>> a, b = task_generator(0, 1, 2), task_generator(0, 1, 2)
    >>> torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))
    True
    """
    high, low = np.random.SeedSequence([seed, round_, task]).generate_state(2)
    return torch.Generator().manual_seed(int(high) << 32 | int(low))


def learned_step(
    optimizer: StepOptimizer,
    optimizee: MLP,
    params: Tensor,
    state: Any,
    x: Tensor,
    y: Tensor,
) -> tuple[Tensor, Any, Tensor, Tensor, Tensor]:
    """One optimizee step by the LSTM (or a functional optimizer): ``theta_next = theta + u``,
    ``(u, state_next) = update(g, state, theta)``.

    Returns:
        ``(theta_next, state_next, loss, u, g)``; ``loss[tasks]`` is the minibatch loss at
        ``theta`` in :func:`first_order_loss` form, ``g`` its (detached) gradient.
    """
    loss, grad = optimizee_loss_and_grad(optimizee, params, x, y)
    update, state = as_functional(optimizer).update(grad, state, params)
    return params + update, state, first_order_loss(loss, grad, params), update, grad


def unroll_truncation(
    optimizer: StepOptimizer,
    optimizee: MLP,
    trajectory: Trajectory,
    xs: Tensor,
    ys: Tensor,
    step_hook: StepHook,
) -> tuple[Trajectory, Tensor, Tensor]:
    """Advance a trajectory by one truncation, keeping the graph.

    Args:
        optimizer: the LSTM optimizer, or a functional optimizer.
        optimizee: the functional optimizee.
        trajectory: where the truncation starts (detached).
        xs, ys: one minibatch per step, ``[steps, tasks, B, 784]`` and ``[steps, tasks, B]``.
        step_hook: ``(theta, g, u, state) -> scalar`` called at every step, ``state`` the
            optimizer state ``u`` came from (probes may observe); its value (e.g. a regularizer)
            is added to the meta-loss.

    Returns:
        The advanced trajectory, the step losses ``[steps, tasks]`` and the summed penalty.
    """
    params, state = trajectory.params, trajectory.state
    losses, penalty = [], params.new_zeros(())
    for x, y in zip(xs, ys, strict=True):
        next_params, next_state, loss, update, grad = learned_step(optimizer, optimizee, params, state, x, y)
        penalty = penalty + step_hook(params, grad, update, state)
        losses.append(loss)
        params, state = next_params, next_state
    return Trajectory(params, state, trajectory.step + len(xs)), torch.stack(losses), penalty


@torch.no_grad()
def run_trajectories(
    optimizer: StepOptimizer,
    optimizee: MLP,
    trajectory: Trajectory,
    minibatches: Iterator[tuple[Tensor, Tensor]],
    n_iters: int,
) -> tuple[Tensor, Tensor]:
    """Train ``tasks`` optimizees for ``n_iters`` steps with a frozen optimizer (no meta-gradient).

    Returns:
        Losses ``[n_iters, tasks]`` (each at the parameters before its step) and the final
        parameters ``[tasks, D]``.
    """
    params, state, losses = trajectory.params, trajectory.state, []
    for x, y in islice(minibatches, n_iters):
        params, state, loss, *_ = learned_step(optimizer, optimizee, params, state, x, y)
        losses.append(loss)
    return torch.stack(losses), params


def validate_symmetry_reg(symmetry_reg: SymmetryReg | None, optimizee: MLP) -> dict | None:
    """``{beta, kinds, form}`` with defaults filled in, ``None`` when it adds nothing; a
    :class:`ConfigError` naming ``model.symmetry_reg`` for a negative ``beta``, a kind the
    optimizee does not have or an unknown form."""
    if not symmetry_reg or not symmetry_reg.get("beta"):
        return None
    beta, kinds = float(symmetry_reg["beta"]), list(symmetry_reg.get("kinds", ["rescale"]))
    form = symmetry_reg.get("form", "sum_abs")
    available = sorted({group.kind for group in optimizee.symmetry_groups()})
    if beta < 0 or not kinds or not set(kinds) <= set(available) or form not in ("abs_sum", "sum_abs"):
        raise ConfigError(
            f"invalid `model.symmetry_reg` (beta={beta}, kinds={kinds}, form={form!r}): beta must be "
            f">= 0, kinds a non-empty subset of this optimizee's symmetries {available} and form "
            "abs_sum or sum_abs."
        )
    return {"beta": beta, "kinds": kinds, "form": form}
