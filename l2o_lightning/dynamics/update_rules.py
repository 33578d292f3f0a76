"""What an optimizer would do: the updates ``u = theta_next - theta`` it would apply to many
gradients from its current state, vectorized over the gradients, changing nothing.

Flat vectors here follow the optimizer: all its parameters concatenated in param-group
order. An optimizer is supported when its step is, per parameter, a functional optimizer's
``update`` (:mod:`l2o_lightning.dynamics.functional_optim`) over the parameter's state entries:
``torch.optim.SGD``, ``Adam``, ``AdamW`` and lion-pytorch's ``Lion`` through the adapters
registered here (per exact class: a subclass may step differently), and any shell with a
``functional_for(group)`` method (the package's ``LionSGD`` and ``L2O``). Any other optimizer
falls back to stepping a deep copy once per gradient (slow, warned).
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

from l2o_lightning.dynamics import functional_optim
from l2o_lightning.dynamics.functional_optim import FunctionalOptimizer, state_from_entries

UpdateRule = Callable[[Optimizer, Tensor], Tensor]
# (optimizer, one of its param groups) -> the functional optimizer its step applies to that group
FunctionalOf = Callable[[Optimizer, dict], FunctionalOptimizer]

UPDATE_RULES: dict[type[Optimizer], UpdateRule] = {}


def register_update_rule(*optimizer_types: type[Optimizer]) -> Callable[[UpdateRule], UpdateRule]:
    """Decorator: use ``rule(optimizer, grads[N, D]) -> [N, D]`` for these exact classes."""

    def register(rule: UpdateRule) -> UpdateRule:
        for optimizer_type in optimizer_types:
            UPDATE_RULES[optimizer_type] = rule
        return rule

    return register


def optimizer_params(optimizer: Optimizer) -> list[Tensor]:
    """The optimizer's parameters in param-group order (the order of flat vectors)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


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
    if rule is None and callable(getattr(optimizer, "functional_for", None)):
        rule = functional_rule(type(optimizer).functional_for)
    if rule is None:
        _warn_fallback(type(optimizer).__qualname__)
        return stepped_updates(optimizer, grads)
    return rule(optimizer, grads)


@cache
def _warn_fallback(name: str) -> None:
    warnings.warn(
        f"no update rule for optimizer {name}: probes step a deep copy of it once per "
        "gradient row (slow); register one with "
        "l2o_lightning.dynamics.update_rules.register_update_rule or give it a "
        "`functional_for(group)` method",
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


def functional_rule(functional_of: FunctionalOf) -> UpdateRule:
    """The rule of an optimizer that steps each parameter by ``functional_of(optimizer, group)``
    over the parameter's state entries: for every parameter, ``row_updates`` of its columns of
    the gradient rows from that state (one broadcast call), read and not written back."""

    def rule(optimizer: Optimizer, grads: Tensor) -> Tensor:
        parts = []
        for group, p, g in _split(optimizer, grads):
            functional = functional_of(optimizer, group)
            state = state_from_entries(functional, optimizer.state.get(p, {}), p.detach())
            parts.append(functional.row_updates(g, state, p.detach()).reshape(len(grads), -1))
        return torch.cat(parts, 1)

    return rule


@register_update_rule(SGD)
@functional_rule
def sgd_rule(optimizer: Optimizer, group: dict) -> functional_optim.SGD:
    """``torch.optim.SGD``'s group as :class:`~l2o_lightning.dynamics.functional_optim.SGD`."""
    return functional_optim.SGD(
        lr=float(group["lr"]), momentum=group["momentum"], dampening=group["dampening"],
        weight_decay=group["weight_decay"], nesterov=group["nesterov"], maximize=group["maximize"],
    )


@register_update_rule(Adam, AdamW)
@functional_rule
def adam_rule(optimizer: Optimizer, group: dict) -> functional_optim.Adam:
    """``torch.optim.Adam``'s or ``AdamW``'s group as
    :class:`~l2o_lightning.dynamics.functional_optim.Adam`."""
    return functional_optim.Adam(
        lr=float(group["lr"]), betas=tuple(float(b) for b in group["betas"]), eps=group["eps"],
        weight_decay=group["weight_decay"], amsgrad=group["amsgrad"], maximize=group["maximize"],
        decoupled_weight_decay=group.get("decoupled_weight_decay", isinstance(optimizer, AdamW)),
    )


@register_update_rule(Lion)
@functional_rule
def lion_rule(optimizer: Lion, group: dict) -> functional_optim.Lion:
    """lion-pytorch's ``Lion`` group as :class:`~l2o_lightning.dynamics.functional_optim.Lion`;
    with ``decoupled_weight_decay`` it divides the decay by the lr it was built with (its defaults)."""
    decay = group["weight_decay"]
    if optimizer.decoupled_wd:
        decay = decay / optimizer.defaults["lr"]
    return functional_optim.Lion(lr=float(group["lr"]), betas=tuple(group["betas"]), weight_decay=decay)
