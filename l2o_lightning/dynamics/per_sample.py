"""Gradients of many noise units in one batched call (``torch.func``).

A unit is a group of samples whose mean loss gives one gradient: a minibatch of the
training batch size, or a single sample. ``vmap(grad)`` runs all units at once; a single
sample cannot pass a BatchNorm alone (no batch statistics), so per-sample gradients of
BatchNorm models are the rows of the Jacobian of the per-sample losses of one batch.
"""

from __future__ import annotations

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
