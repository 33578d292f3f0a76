"""Gradients of many noise units in one batched call (``torch.func``).

A unit is a group of samples whose mean loss gives one gradient: a minibatch of the
training batch size, or a single sample. ``vmap(grad)`` runs all units at once; a single
sample cannot pass a BatchNorm alone (no batch statistics), so per-sample gradients of
BatchNorm models are the rows of the Jacobian of the per-sample losses of one batch. A pool
whose last unit is smaller (a whole training loader) is a list of groups of equal-size units,
one batched call per group.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad, jacrev, vmap

from l2o_lightning.optimizees import MLP


def unit_gradients(model: MLP, flat: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """``g_i = grad_theta mean_{s in unit i} loss(theta; x_s, y_s)`` for every unit at once.

    Args:
        model: the optimizee (runs functionally; its own parameters are not used).
        flat: parameters ``theta``, ``[D]``.
        x: inputs grouped by unit, ``[M, U, ...]``.
        y: labels, ``[M, U]``.

    Returns:
        ``[M, D]``, row ``i`` the gradient of unit ``i``.
    """
    return vmap(grad(model.functional_loss), in_dims=(None, 0, 0))(flat, x, y)


def coupled_sample_gradients(model: MLP, flat: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Per-sample gradients inside one batch whose samples interact (BatchNorm statistics):
    row ``i`` is ``d loss_i / d theta`` with ``loss_i`` the loss of sample ``i`` in the batch
    forward pass, so the rows average to the batch gradient.

    Args:
        model: the optimizee.
        flat: parameters ``theta``, ``[D]``.
        x: one batch of inputs, ``[B, ...]``.
        y: labels, ``[B]``.

    Returns:
        ``[B, D]``.
    """

    def sample_losses(theta: Tensor) -> Tensor:  # [B]
        return F.cross_entropy(model.functional_logits(theta, x), y, reduction="none")

    return jacrev(sample_losses)(flat)


def pool_gradients(model: MLP, flat: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Gradients of a pool of units, ``x[M, U, ...]``, ``y[M, U]`` -> ``[M, D]``: one
    ``vmap(grad)`` call, except single samples (``U = 1``) of a BatchNorm model, which are
    Jacobian rows of the whole pool as one batch (:func:`coupled_sample_gradients`)."""
    if x.shape[1] == 1 and model.batchnorm:
        return coupled_sample_gradients(model, flat, x[:, 0], y[:, 0])
    return unit_gradients(model, flat, x, y)


# units of equal size: inputs [M, U, ...] and labels [M, U]
UnitGroup = tuple[Tensor, Tensor]


def split_units(x: Tensor, y: Tensor, size: int) -> list[UnitGroup]:
    """Consecutive runs of ``size`` samples of ``x[N, ...]``, ``y[N]`` as units, grouped for
    batched calls: ``x[N // size, size, ...]`` and, when ``r = N mod size > 0``, a last group
    of one ragged unit ``x[1, r, ...]`` (a shuffling ``DataLoader``'s last minibatch).

    >>> [tuple(g[0].shape) for g in split_units(torch.zeros(10, 3), torch.zeros(10), 4)]
    [(2, 4, 3), (1, 2, 3)]
    """
    full = len(x) // size * size
    groups = [(x[:full].view(-1, size, *x.shape[1:]), y[:full].view(-1, size))] if full else []
    if full < len(x):
        groups.append((x[None, full:], y[None, full:]))
    return groups


def grouped_pool_gradients(model: MLP, flat: Tensor, groups: Sequence[UnitGroup]) -> Tensor:
    """Gradients of the units of every group (:func:`pool_gradients`, one call per group),
    concatenated in order: ``[sum_k M_k, D]``."""
    return torch.cat([pool_gradients(model, flat, x, y) for x, y in groups])
