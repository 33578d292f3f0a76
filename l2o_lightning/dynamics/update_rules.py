"""What an optimizer would do: the updates ``u = theta_next - theta`` it would apply to many
gradients from its current state, vectorized over the gradients, changing nothing.

Flat vectors here follow the optimizer: all its parameters concatenated in param-group
order. Rules are registered per exact optimizer class (a subclass may step differently);
any other optimizer falls back to stepping a deep copy once per gradient (slow, warned).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from functools import cache

import torch
from lion_pytorch import Lion
from torch import Tensor
from torch.optim import SGD, Adam, AdamW, Optimizer

from l2o_lightning.optim import (
    L2O,
    LionSGD,
    lion_sgd_update,
    lion_update,
    optimizer_params,
    sgd_momentum_buffer,
)

UpdateRule = Callable[[Optimizer, Tensor], Tensor]
# one parameter: (optimizer, param group, parameter, grads [N, *shape]) -> updates [N, *shape]
ParamRule = Callable[[Optimizer, dict, Tensor, Tensor], Tensor]

UPDATE_RULES: dict[type[Optimizer], UpdateRule] = {}


def register_update_rule(*optimizer_types: type[Optimizer]) -> Callable[[UpdateRule], UpdateRule]:
    """Decorator: use ``rule(optimizer, grads[N, D]) -> [N, D]`` for these exact classes."""

    def register(rule: UpdateRule) -> UpdateRule:
        for optimizer_type in optimizer_types:
            UPDATE_RULES[optimizer_type] = rule
        return rule

    return register


def flat_optimizer_params(optimizer: Optimizer) -> Tensor:
    """The optimizer's parameters as one detached ``[D]`` copy."""
    return torch.cat([p.detach().reshape(-1) for p in optimizer_params(optimizer)])


@torch.no_grad()
def updates(optimizer: Optimizer, grads: Tensor) -> Tensor:
    """The update the optimizer's next ``step()`` would apply for each gradient row.

    Uses the optimizer's current state (momenta, step counts) as the next step would,
    without changing it or the parameters.

    Args:
        optimizer: the optimizer, between two steps.
        grads: ``[N, D]``, ``D`` = all its parameters in param-group order.

    Returns:
        ``[N, D]`` updates ``u = theta_next - theta``.
    """
    numel = sum(p.numel() for p in optimizer_params(optimizer))
    if grads.ndim != 2 or grads.shape[1] != numel:
        raise ValueError(
            f"gradient rows must be [N, {numel}] for this {type(optimizer).__name__}, "
            f"got {list(grads.shape)}"
        )
    rule = UPDATE_RULES.get(type(optimizer))
    if rule is None:
        _warn_fallback(type(optimizer).__qualname__)
        return stepped_updates(optimizer, grads)
    return rule(optimizer, grads)


@cache
def _warn_fallback(name: str) -> None:
    warnings.warn(
        f"no update rule for optimizer {name}: probes step a deep copy of it once per "
        "gradient row (slow); register one with "
        "l2o_lightning.dynamics.update_rules.register_update_rule",
        stacklevel=3,
    )


def stepped_updates(optimizer: Optimizer, grads: Tensor) -> Tensor:
    """Fallback for any optimizer: for each row, deep-copy the optimizer (with its
    parameters and state), set the row as the gradient, step the copy, and diff."""
    rows = []
    for row in grads:  # [D]
        clone = _deep_copy(optimizer)
        params = optimizer_params(clone)
        before = flat_optimizer_params(clone)
        for p, g in zip(params, row.split([p.numel() for p in params]), strict=True):
            p.grad = g.view_as(p).clone()
        type(clone).step(clone)  # the class's step: an instance-level patch may wrap the original
        rows.append(flat_optimizer_params(clone) - before)
    return torch.stack(rows)


def _deep_copy(optimizer: Optimizer) -> Optimizer:
    """A deep copy with all instance attributes (``Optimizer.__getstate__`` keeps only
    defaults, state and param groups, losing e.g. Lion's ``decoupled_wd``)."""
    clone = object.__new__(type(optimizer))
    clone.__dict__.update(copy.deepcopy(optimizer.__dict__))
    return clone


def _split(optimizer: Optimizer, grads: Tensor) -> Iterator[tuple[dict, Tensor, Tensor]]:
    """``(group, param, grads[N, *param.shape])`` per parameter, in flat order."""
    start = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            yield group, p, grads[:, start : start + p.numel()].view(-1, *p.shape)
            start += p.numel()


def per_parameter(rule: ParamRule) -> UpdateRule:
    """Lift a rule for one parameter to the flat ``[N, D] -> [N, D]`` form."""

    def flat_rule(optimizer: Optimizer, grads: Tensor) -> Tensor:
        parts = [rule(optimizer, group, p, g) for group, p, g in _split(optimizer, grads)]
        return torch.cat([u.reshape(len(grads), -1) for u in parts], 1)

    return flat_rule


@register_update_rule(SGD)
@per_parameter
def sgd_rule(optimizer: Optimizer, group: dict, p: Tensor, g: Tensor) -> Tensor:
    """``torch.optim.SGD``: ``d = g + wd * theta``; ``b = mu * b + (1 - dampening) * d``
    (``b = d`` on the first step); ``d = d + mu * b`` (nesterov) or ``b``; ``u = -lr * d``."""
    g = -g if group["maximize"] else g
    if group["weight_decay"]:
        g = g + group["weight_decay"] * p
    momentum = group["momentum"]
    if momentum:
        buffer = optimizer.state.get(p, {}).get("momentum_buffer")
        damped = g if buffer is None else g * (1 - group["dampening"])
        buffer = sgd_momentum_buffer(damped, buffer, momentum)
        g = g + momentum * buffer if group["nesterov"] else buffer
    return -float(group["lr"]) * g


@register_update_rule(Adam, AdamW)
@per_parameter
def adam_rule(optimizer: Optimizer, group: dict, p: Tensor, g: Tensor) -> Tensor:
    """``torch.optim.Adam``/``AdamW`` at step ``t`` (the next step's count):
    ``m = beta1 m + (1 - beta1) g``, ``v = beta2 v + (1 - beta2) g^2`` (amsgrad: running
    max of ``v``), ``u = -lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)``, and
    weight decay ``wd * theta`` added to ``g`` (Adam) or ``-lr * wd * theta`` to ``u`` (AdamW)."""
    state = optimizer.state.get(p, {})
    beta1, beta2 = (float(b) for b in group["betas"])
    lr, wd = float(group["lr"]), group["weight_decay"]
    decoupled = group.get("decoupled_weight_decay", isinstance(optimizer, AdamW))
    g = -g if group["maximize"] else g
    if wd and not decoupled:
        g = g + wd * p
    step = float(state["step"]) + 1 if state else 1.0
    exp_avg = state["exp_avg"].lerp(g, 1 - beta1) if state else g * (1 - beta1)
    exp_avg_sq = (state["exp_avg_sq"] * beta2 if state else 0) + g.square() * (1 - beta2)
    if group["amsgrad"] and state:
        exp_avg_sq = torch.maximum(state["max_exp_avg_sq"], exp_avg_sq)
    denom = exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5 + group["eps"]
    u = -(lr / (1 - beta1**step)) * (exp_avg / denom)
    return u - lr * wd * p if wd and decoupled else u


@register_update_rule(Lion)
@per_parameter
def lion_rule(optimizer: Optimizer, group: dict, p: Tensor, g: Tensor) -> Tensor:
    """``lion_pytorch.Lion``: ``u = -lr * (sign(beta1 m + (1 - beta1) g) + wd * theta)``, with
    ``wd / initial lr`` under ``decoupled_weight_decay``."""
    wd = group["weight_decay"]
    wd = wd / optimizer._init_lr if optimizer.decoupled_wd else wd
    exp_avg = optimizer.state.get(p, {}).get("exp_avg", torch.zeros_like(p))
    return lion_update(p, g, exp_avg, group["lr"], group["betas"][0], wd)


@register_update_rule(LionSGD)
@per_parameter
def lion_sgd_rule(optimizer: Optimizer, group: dict, p: Tensor, g: Tensor) -> Tensor:
    """:class:`~l2o_lightning.optim.LionSGD`: ``u = w * u_Lion + (1 - w) * u_SGD``."""
    state = optimizer.state.get(p, {})
    exp_avg = state.get("exp_avg", torch.zeros_like(p))
    buffer = sgd_momentum_buffer(g, state.get("momentum_buffer"), group["momentum"])
    return lion_sgd_update(p, g, exp_avg, buffer, group)


@register_update_rule(L2O)
def l2o_rule(optimizer: L2O, grads: Tensor) -> Tensor:
    """:class:`~l2o_lightning.optim.L2O`: ``u_i = net(g_i, state)`` for every row from the
    same LSTM state (:meth:`~l2o_lightning.learned.LSTMOptimizerNet.updates_from_one_state`)."""
    net, weight = optimizer.net, optimizer.net.head.weight
    if (weight.device, weight.dtype) != (grads.device, grads.dtype):  # L2O.step would move it
        net = copy.deepcopy(net).to(device=grads.device, dtype=grads.dtype)
    return net.updates_from_one_state(grads, optimizer.lstm_state())
