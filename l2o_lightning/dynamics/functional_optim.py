"""Optimizers as pure functions over explicit state (the shape of optax and learned_optimization):
``init(params) -> state`` and ``update(grad, state, params) -> (u, state)``, the update added to
the parameters, ``theta_next = theta + u``. Nothing is changed in place.

The formulas are those of ``torch.optim.SGD``, ``torch.optim.Adam``/``AdamW``, lion-pytorch's
``Lion`` (Chen et al. 2023, https://arxiv.org/abs/2302.06675), the paper's Lion-SGD and the
LSTM of Andrychowicz et al. 2016 (https://arxiv.org/abs/1606.04474). A state's fields are named
as the torch optimizer's per-parameter state entries, so ``state_from_entries`` reads one out of
``torch_optimizer.state[p]``. Every optimizer here is coordinatewise: ``params`` may have any
shape, e.g. one parameter tensor, all parameters as one flat ``[D]`` or stacked tasks ``[tasks, D]``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from l2o_lightning.learned import LSTMOptimizerNet, LSTMState


class FunctionalOptimizer(ABC):
    """``init(params) -> state``, ``update(grad, state, params) -> (u, state)``; ``state_type``
    is the class of the state (a dataclass of tensors)."""

    state_type: ClassVar[type]

    @abstractmethod
    def init(self, params: Tensor) -> Any:
        """The state before the first step, for parameters ``params``."""

    @abstractmethod
    def update(self, grad: Tensor, state: Any, params: Tensor) -> tuple[Tensor, Any]:
        """The update ``u`` (``theta_next = params + u``) for gradient ``grad`` and the next state."""

    def row_updates(self, grads: Tensor, state: Any, params: Tensor) -> Tensor:
        """``u_i = update(grads[i], state, params)[0]`` for every row of ``grads[N, *params.shape]``
        in one call, all from the same state: the elementwise formulas broadcast over rows."""
        return self.update(grads, state, params)[0]


def state_from_entries(optimizer: FunctionalOptimizer, entries: Mapping[str, Any], params: Tensor) -> Any:
    """The state a torch optimizer keeps as per-parameter entries named as the state's fields
    (``optimizer.init(params)`` while there are none, before the first step)."""
    return type(optimizer).state_type(**entries) if entries else optimizer.init(params)


def state_entries(state: Any) -> dict[str, Any]:
    """A state's fields by name: the per-parameter entries of a torch optimizer."""
    return {field.name: getattr(state, field.name) for field in dataclasses.fields(state)}


def detach_state(state: Any) -> Any:
    """The same state with every tensor cut from the autograd graph (a truncation boundary)."""
    entries = state_entries(state)
    return type(state)(**{name: v.detach() if isinstance(v, Tensor) else v for name, v in entries.items()})


@dataclass
class SGDState:
    """``momentum_buffer``: the heavy-ball buffer ``b``; ``None`` before the first step and
    without momentum."""

    momentum_buffer: Tensor | None = None


@dataclass(frozen=True)
class SGD(FunctionalOptimizer):
    """``torch.optim.SGD``: ``d = g + wd * theta`` (``-g`` for ``g`` when maximizing); with
    momentum ``mu``, ``b = d`` on the first step and ``b = mu * b + (1 - dampening) * d`` after,
    then ``d = d + mu * b`` (nesterov) or ``d = b``; ``u = -lr * d``."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    maximize: bool = False
    state_type: ClassVar[type] = SGDState

    def init(self, params: Tensor) -> SGDState:
        return SGDState()

    def update(self, grad: Tensor, state: SGDState, params: Tensor) -> tuple[Tensor, SGDState]:
        direction = -grad if self.maximize else grad
        if self.weight_decay:
            direction = direction + self.weight_decay * params
        if not self.momentum:
            return -self.lr * direction, state
        if state.momentum_buffer is None:
            buffer = direction.clone()  # a copy: the caller may reuse the gradient's memory
        else:
            buffer = state.momentum_buffer * self.momentum + (1 - self.dampening) * direction
        direction = direction + self.momentum * buffer if self.nesterov else buffer
        return -self.lr * direction, SGDState(buffer)


@dataclass
class AdamState:
    """``step``: steps taken (a scalar tensor); ``exp_avg``, ``exp_avg_sq``: the moments ``m``,
    ``v``; ``max_exp_avg_sq``: the running maximum of ``v`` (amsgrad only, else ``None``)."""

    step: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    max_exp_avg_sq: Tensor | None = None


@dataclass(frozen=True)
class Adam(FunctionalOptimizer):
    """``torch.optim.Adam`` (``AdamW``: ``decoupled_weight_decay``) at step ``t`` (counted from 1):
    ``g = g + wd * theta`` (coupled decay), ``m = m + (1 - beta1) (g - m)``,
    ``v = beta2 v + (1 - beta2) g^2`` (amsgrad: ``v_hat = max(v_hat, v)`` used for ``v``),
    ``u = -lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``, and
    ``u = u - lr * wd * theta`` under decoupled decay; ``-g`` for ``g`` when maximizing."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    decoupled_weight_decay: bool = False
    maximize: bool = False
    state_type: ClassVar[type] = AdamState

    def init(self, params: Tensor) -> AdamState:
        zeros = torch.zeros_like(params)
        return AdamState(torch.tensor(0.0), zeros, zeros, zeros if self.amsgrad else None)

    def update(self, grad: Tensor, state: AdamState, params: Tensor) -> tuple[Tensor, AdamState]:
        beta1, beta2 = self.betas
        grad = -grad if self.maximize else grad
        if self.weight_decay and not self.decoupled_weight_decay:
            grad = grad + self.weight_decay * params
        step = state.step + 1
        t = float(step)
        exp_avg = state.exp_avg.lerp(grad, 1 - beta1)
        exp_avg_sq = state.exp_avg_sq * beta2 + (1 - beta2) * grad * grad
        max_exp_avg_sq = torch.maximum(state.max_exp_avg_sq, exp_avg_sq) if self.amsgrad else None
        second_moment = max_exp_avg_sq if self.amsgrad else exp_avg_sq
        denom = second_moment.sqrt() / (1 - beta2**t) ** 0.5 + self.eps
        update = -(self.lr / (1 - beta1**t)) * exp_avg / denom
        if self.weight_decay and self.decoupled_weight_decay:
            update = update - self.lr * self.weight_decay * params
        return update, AdamState(step, exp_avg, exp_avg_sq, max_exp_avg_sq)


@dataclass
class LionState:
    """``exp_avg``: Lion's momentum ``m``."""

    exp_avg: Tensor


@dataclass(frozen=True)
class Lion(FunctionalOptimizer):
    """lion-pytorch's ``Lion``: ``u = -lr * (sign(beta1 m + (1 - beta1) g) + wd * theta)``,
    then ``m = beta2 m + (1 - beta2) g``. ``weight_decay`` is the decay applied (lion-pytorch's
    ``decoupled_weight_decay`` divides its setting by the initial lr)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    state_type: ClassVar[type] = LionState

    def init(self, params: Tensor) -> LionState:
        return LionState(torch.zeros_like(params))

    def update(self, grad: Tensor, state: LionState, params: Tensor) -> tuple[Tensor, LionState]:
        beta1, beta2 = self.betas
        direction = torch.sign(state.exp_avg * beta1 + grad * (1 - beta1))
        update = -self.lr * (direction + self.weight_decay * params)
        return update, LionState(state.exp_avg * beta2 + grad * (1 - beta2))


@dataclass
class LionSGDState:
    """Lion's momentum ``exp_avg`` and SGD's heavy-ball ``momentum_buffer``."""

    exp_avg: Tensor
    momentum_buffer: Tensor | None = None


@dataclass(frozen=True)
class LionSGD(FunctionalOptimizer):
    """Interpolation of Lion and SGD with momentum (the paper's Fig. 7):
    ``u = lion_weight * u_Lion + (1 - lion_weight) * u_SGD``, ``u_Lion`` from :class:`Lion`
    (``lr``, ``betas``, ``weight_decay``), ``u_SGD`` from :class:`SGD` (``sgd_lr``, ``momentum``)."""

    lr: float = 1e-3
    sgd_lr: float = 0.1
    lion_weight: float = 0.5
    betas: tuple[float, float] = (0.9, 0.99)
    momentum: float = 0.9
    weight_decay: float = 0.0
    state_type: ClassVar[type] = LionSGDState

    def init(self, params: Tensor) -> LionSGDState:
        return LionSGDState(torch.zeros_like(params))

    def update(self, grad: Tensor, state: LionSGDState, params: Tensor) -> tuple[Tensor, LionSGDState]:
        lion, sgd = Lion(self.lr, self.betas, self.weight_decay), SGD(self.sgd_lr, self.momentum)
        u_lion, lion_state = lion.update(grad, LionState(state.exp_avg), params)
        u_sgd, sgd_state = sgd.update(grad, SGDState(state.momentum_buffer), params)
        update = self.lion_weight * u_lion + (1 - self.lion_weight) * u_sgd
        return update, LionSGDState(lion_state.exp_avg, sgd_state.momentum_buffer)


@dataclass(frozen=True)
class L2O(FunctionalOptimizer):
    """The coordinatewise LSTM optimizer: ``(u, state) = net(g, state)``, ``u = out_mult * head(h)``
    (:class:`~l2o_lightning.learned.LSTMOptimizerNet`); the state is the LSTM's ``h, c`` of every
    coordinate, ``[num_layers, *params.shape, hidden]``."""

    net: LSTMOptimizerNet
    state_type: ClassVar[type] = LSTMState

    def init(self, params: Tensor) -> LSTMState:
        return self.net.initial_state(params.shape, params.device, params.dtype)

    def update(self, grad: Tensor, state: LSTMState, params: Tensor) -> tuple[Tensor, LSTMState]:
        return self.net(grad, state)

    def row_updates(self, grads: Tensor, state: LSTMState, params: Tensor) -> Tensor:
        """``u_i = net(g_i, state)[0]`` for every row, the state's recurrent half computed once
        (:meth:`~l2o_lightning.learned.LSTMOptimizerNet.updates_from_one_state`)."""
        return self.net.updates_from_one_state(grads, state)
