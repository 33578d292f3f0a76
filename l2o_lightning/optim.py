"""Optimizers of the package (``torch.optim.Optimizer`` subclasses) and the pure update
formulas they share with the probes. Lion itself comes from ``lion-pytorch``."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

from l2o_lightning.errors import ConfigError


def sgd_momentum_buffer(grad: Tensor, buffer: Tensor | None, momentum: float) -> Tensor:
    """Heavy-ball buffer of ``torch.optim.SGD`` (no dampening): ``b = g`` on the first
    step, then ``b = momentum * b + g``."""
    if buffer is None or momentum == 0:
        return grad.clone()
    return buffer * momentum + grad


def lion_update(
    param: Tensor, grad: Tensor, exp_avg: Tensor, lr: float, beta1: float, weight_decay: float
) -> Tensor:
    """Lion's update (Chen et al. 2023), as applied by ``lion-pytorch``:
    ``u = -lr * (wd * theta + sign(beta1 * m + (1 - beta1) * g))``."""
    direction = torch.sign(exp_avg * beta1 + grad * (1 - beta1))
    return -lr * (direction + weight_decay * param)


def lion_next_exp_avg(exp_avg: Tensor, grad: Tensor, beta2: float) -> Tensor:
    """Lion's momentum after a step: ``m = beta2 * m + (1 - beta2) * g``."""
    return exp_avg.lerp(grad, 1 - beta2)


class LionSGD(Optimizer):
    """Interpolation of Lion and SGD with momentum (the paper's Fig. 7):
    ``u = lion_weight * u_Lion + (1 - lion_weight) * u_SGD``.

    Args:
        params: parameters to optimize.
        lr: Lion's learning rate.
        sgd_lr: SGD's learning rate.
        lion_weight: ``lambda_L`` in ``[0, 1]``; 0 is SGD, 1 is Lion.
        betas: Lion's ``(beta1, beta2)``.
        momentum: SGD's momentum.
        weight_decay: Lion's weight decay.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        sgd_lr: float = 0.1,
        lion_weight: float = 0.5,
        betas: tuple[float, float] = (0.9, 0.99),
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ) -> None:
        if not 0.0 <= lion_weight <= 1.0:
            raise ConfigError(f"`lion_weight` must be in [0, 1], got {lion_weight}.")
        if lr <= 0 or sgd_lr <= 0:
            raise ConfigError(f"learning rates must be positive, got lr={lr}, sgd_lr={sgd_lr}.")
        defaults = dict(
            lr=lr, sgd_lr=sgd_lr, lion_weight=lion_weight, betas=tuple(betas),
            momentum=momentum, weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            weight = group["lion_weight"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                exp_avg = state.get("exp_avg", torch.zeros_like(p))
                u_lion = lion_update(p, p.grad, exp_avg, group["lr"], beta1, group["weight_decay"])
                buffer = sgd_momentum_buffer(p.grad, state.get("momentum_buffer"), group["momentum"])
                u_sgd = -group["sgd_lr"] * buffer
                state["exp_avg"] = lion_next_exp_avg(exp_avg, p.grad, beta2)
                state["momentum_buffer"] = buffer
                p.add_(weight * u_lion + (1 - weight) * u_sgd)
        return loss
