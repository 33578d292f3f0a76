"""Optimizers of the package as ``torch.optim.Optimizer`` shells over the functional optimizers
of :mod:`l2o_lightning.dynamics.functional_optim` (the formulas live there). Lion itself comes
from ``lion-pytorch``; the learned optimizer (Andrychowicz et al. 2016,
https://arxiv.org/abs/1606.04474) is :class:`L2O`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor
from torch.optim import Optimizer

from l2o_lightning import pretrained
from l2o_lightning.allocator import keep_freed_memory
from l2o_lightning.checkpoints import l2o_entry, net_from_checkpoint_entry, read_checkpoint
from l2o_lightning.dynamics import functional_optim
from l2o_lightning.dynamics.functional_optim import FunctionalOptimizer, state_entries, state_from_entries
from l2o_lightning.dynamics.update_rules import optimizer_params
from l2o_lightning.errors import ConfigError
from l2o_lightning.learned import LSTMOptimizerNet, LSTMState


def evaluate_closure(closure: Callable[[], Tensor] | None) -> Tensor | None:
    """The loss from ``optimizer.step(closure)``'s closure, with gradients enabled."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class FunctionalShell(Optimizer):
    """A ``torch.optim`` optimizer that steps every parameter with a gradient by the functional
    optimizer of its group, ``functional_for(group)``: ``theta <- theta + u``, the state kept as
    the parameter's entries in ``self.state`` (named as the state's fields). The probes' update
    rules read the same two things (:func:`~l2o_lightning.dynamics.update_rules.functional_rule`)."""

    def functional_for(self, group: dict) -> FunctionalOptimizer:
        """The functional optimizer that steps the parameters of ``group``."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            functional = self.functional_for(group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = state_from_entries(functional, self.state.get(p, {}), p)
                update, state = functional.update(p.grad, state, p)
                self.state[p].update(state_entries(state))
                p.add_(update)
        return loss


class LionSGD(FunctionalShell):
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

    def functional_for(self, group: dict) -> functional_optim.LionSGD:
        return functional_optim.LionSGD(
            lr=group["lr"], sgd_lr=group["sgd_lr"], lion_weight=group["lion_weight"], betas=group["betas"],
            momentum=group["momentum"], weight_decay=group["weight_decay"],
        )


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


class L2O(FunctionalShell):
    """The meta-trained LSTM optimizer as a ``torch.optim`` optimizer, a shell over
    :class:`~l2o_lightning.dynamics.functional_optim.L2O`.

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
        keep_freed_memory()  # every step allocates and frees the LSTM's MiB-sized buffers
        net = load_lstm_optimizer(checkpoint)
        if out_mult is not None:
            net.out_mult = out_mult
        super().__init__(params, {})
        self.net = net.eval().requires_grad_(False)
        self.functional = functional_optim.L2O(self.net)

    def functional_for(self, group: dict) -> functional_optim.L2O:
        """The LSTM, moved to the device and dtype of the group's parameters as a step moves it."""
        return self._functional_like(group["params"][0])

    def _functional_like(self, tensor: Tensor) -> functional_optim.L2O:
        weight = self.net.head.weight
        if (weight.device, weight.dtype) != (tensor.device, tensor.dtype):
            self.net.to(device=tensor.device, dtype=tensor.dtype)
        return self.functional

    def _state_of(self, param: Tensor) -> LSTMState:
        # reading must not add entries to the defaultdict
        return state_from_entries(self.functional, self.state.get(param, {}), param.reshape(-1))

    def lstm_state(self) -> LSTMState:
        """The state of all parameters' coordinates, concatenated in order:
        ``[num_layers, D, hidden]`` (zeros for parameters not stepped yet)."""
        return LSTMState.cat([self._state_of(p) for p in optimizer_params(self)])

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = evaluate_closure(closure)
        params = [p for p in optimizer_params(self) if p.grad is not None]
        if not params:
            return loss
        grad = torch.cat([p.grad.reshape(-1) for p in params])
        theta = torch.cat([p.reshape(-1) for p in params])
        state = LSTMState.cat([self._state_of(p) for p in params])
        update, state = self._functional_like(grad).update(grad, state, theta)
        sizes = [p.numel() for p in params]
        torch._foreach_add_(params, [u.view_as(p) for u, p in zip(update.split(sizes), params, strict=True)])
        for p, h, c in zip(params, state.h.split(sizes, 1), state.c.split(sizes, 1), strict=True):
            self.state[p].update(h=h, c=c)
        return loss
