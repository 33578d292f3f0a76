"""Optimizers of the package (``torch.optim.Optimizer`` subclasses) and the pure update
formulas they share with the probes. Lion itself comes from ``lion-pytorch``; the learned
optimizer (Andrychowicz et al. 2016, https://arxiv.org/abs/1606.04474) is :class:`L2O`."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor
from torch.optim import Optimizer

from l2o_lightning import pretrained
from l2o_lightning.checkpoints import l2o_entry, net_from_checkpoint_entry, read_checkpoint
from l2o_lightning.errors import ConfigError
from l2o_lightning.learned import LSTMOptimizerNet, LSTMState


def optimizer_params(optimizer: Optimizer) -> list[Tensor]:
    """The optimizer's parameters in param-group order (the order of flat vectors)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


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


def lion_sgd_update(
    param: Tensor, grad: Tensor, exp_avg: Tensor, buffer: Tensor, group: dict
) -> Tensor:
    """LionSGD's update from Lion's momentum ``exp_avg`` and SGD's new heavy-ball ``buffer``:
    ``u = w * u_Lion - (1 - w) * sgd_lr * buffer`` with ``w = group["lion_weight"]``."""
    u_lion = lion_update(param, grad, exp_avg, group["lr"], group["betas"][0], group["weight_decay"])
    weight = group["lion_weight"]
    return weight * u_lion + (1 - weight) * (-group["sgd_lr"] * buffer)


def evaluate_closure(closure: Callable[[], Tensor] | None) -> Tensor | None:
    """The loss from ``optimizer.step(closure)``'s closure, with gradients enabled."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


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
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                exp_avg = state.get("exp_avg", torch.zeros_like(p))
                buffer = sgd_momentum_buffer(p.grad, state.get("momentum_buffer"), group["momentum"])
                update = lion_sgd_update(p, p.grad, exp_avg, buffer, group)
                state["exp_avg"] = lion_next_exp_avg(exp_avg, p.grad, group["betas"][1])
                state["momentum_buffer"] = buffer
                p.add_(update)
        return loss


_CHECKPOINT_HINT = (
    "pass a checkpoint written by meta-training (`l2o fit -c configs/meta_train/leaky_relu.yaml`), e.g. "
    "`--optimizer.checkpoint lightning_logs/meta_train/leaky_relu/version_0/checkpoints/best-step<N>.ckpt`, "
    "or a shipped one, `--optimizer.checkpoint pretrained:<name>`"
)


def load_lstm_optimizer(checkpoint: str | Path) -> LSTMOptimizerNet:
    """The LSTM optimizer stored under ``"l2o"`` in a meta-training checkpoint or a shipped one
    (``pretrained:<name>``, :mod:`l2o_lightning.pretrained`), loaded with
    ``torch.load(weights_only=True)``; a missing, truncated, corrupt, foreign or
    version-mismatched file raises :class:`ConfigError` naming the setting ``optimizer.checkpoint``."""
    checkpoint = pretrained.resolve(checkpoint)
    where = f"L2O checkpoint '{checkpoint}' (setting `optimizer.checkpoint`)"
    entry = l2o_entry(read_checkpoint(checkpoint, where, _CHECKPOINT_HINT), where, _CHECKPOINT_HINT)
    try:
        return net_from_checkpoint_entry(entry)
    except (KeyError, TypeError, RuntimeError) as err:
        raise ConfigError(f"{where} holds a malformed LSTM optimizer ({err}); {_CHECKPOINT_HINT}.") from None


class L2O(Optimizer):
    """The meta-trained LSTM optimizer as a ``torch.optim`` optimizer.

    Every step feeds the gradients of all parameters (of all groups, in order) to the LSTM
    in one batched call and applies ``theta <- theta + u``. The LSTM state of each parameter
    lives in ``self.state[p]`` as ``h, c[num_layers, p.numel(), hidden]``.

    Args:
        params: parameters to optimize.
        checkpoint: path of a meta-training checkpoint, or ``pretrained:<name>`` for a shipped
            one (see :func:`load_lstm_optimizer`).
        out_mult: override the output multiplier stored in the checkpoint.

    Attributes:
        net: the :class:`~l2o_lightning.learned.LSTMOptimizerNet` (eval mode, no grad).
    """

    def __init__(self, params: Iterable, checkpoint: str, out_mult: float | None = None) -> None:
        net = load_lstm_optimizer(checkpoint)
        if out_mult is not None:
            net.out_mult = out_mult
        super().__init__(params, {})
        self.net = net.eval().requires_grad_(False)

    def _state_of(self, param: Tensor) -> LSTMState:
        state = self.state.get(param, {})  # reading must not add entries to the defaultdict
        if "h" not in state:
            return self.net.initial_state((param.numel(),), param.device, param.dtype)
        return LSTMState(state["h"], state["c"])

    def lstm_state(self) -> LSTMState:
        """The state of all parameters' coordinates, concatenated in order:
        ``[num_layers, D, hidden]`` (zeros for parameters not stepped yet). It may share memory
        with the optimizer's state: read it, do not modify it."""
        return self._joint_state(optimizer_params(self))

    def _joint_state(self, params: list[Tensor]) -> LSTMState:
        """The states of ``params`` concatenated along the coordinate dim. After a step on the
        same parameters they are consecutive slices of one tensor, which is returned uncopied."""
        states = [self._state_of(p) for p in params]
        joint = LSTMState(states[0].h._base, states[0].c._base)
        expected_shape = (self.net.num_layers, sum(p.numel() for p in params), self.net.hidden_size)
        if joint.h is not None and joint.c is not None and joint.h.shape == expected_shape:
            sizes = [p.numel() * self.net.hidden_size for p in params]
            starts = list(itertools.accumulate(sizes, initial=0))[:-1]
            if all(
                s.h._base is joint.h and s.c._base is joint.c
                and s.h.storage_offset() == s.c.storage_offset() == start
                for s, start in zip(states, starts, strict=True)
            ):
                return joint
        return LSTMState.cat(states, dim=1)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = evaluate_closure(closure)
        params = [p for p in optimizer_params(self) if p.grad is not None]
        if not params:
            return loss
        grad = torch.cat([p.grad.reshape(-1) for p in params])
        weight = self.net.head.weight
        if (weight.device, weight.dtype) != (grad.device, grad.dtype):
            self.net.to(device=grad.device, dtype=grad.dtype)
        update, state = self.net(grad, self._joint_state(params))
        sizes = [p.numel() for p in params]
        torch._foreach_add_(params, [u.view_as(p) for u, p in zip(update.split(sizes), params, strict=True)])
        for p, h, c in zip(params, state.h.split(sizes, 1), state.c.split(sizes, 1), strict=True):
            self.state[p]["h"], self.state[p]["c"] = h, c
        return loss
