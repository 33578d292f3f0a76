"""Deviation of a vector from the symmetry-induced gradient constraints (Kunin et al. 2021,
https://arxiv.org/abs/2012.04728), as in the paper's Fig. 1.

Every neuron ``j`` of a :class:`~l2o_lightning.optimizees.SymmetryGroup` has a constraint
vector ``theta_tilde_j`` with ``<g_j, theta_tilde_j> = 0`` for the gradient ``g``. For any
other vector ``v`` (``v = -u`` for an update ``u``) the deviation of neuron ``j`` is
``d_j = <v_j, theta_tilde_j>``:

- rescale: ``theta_tilde_j = (W_in[j, :], b_in[j], -W_out[:, j])``;
- scale: ``theta_tilde_j = (W[j, :], b[j])``;
- translation: all ones over column ``i`` of the output ``W``, and over its ``b``.

All neurons of all groups of one kind are reduced together (no loop over neurons), and
everything is differentiable in ``v`` (the meta-training regularizer uses ``sum_abs``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from l2o_lightning.optimizees import ParamLayout, SymmetryGroup, SymmetryKind


@dataclass(frozen=True)
class Deviation:
    """Deviation statistics of one symmetry kind, each shaped like ``v``'s leading dims.

    Attributes:
        abs_sum: ``|sum_j d_j|`` (what the paper plots).
        sum_abs: ``sum_j |d_j|`` (the regularizer).
        normalized: ``sum_j |d_j| / sum_j ||v_j|| ||theta_tilde_j||``, scale free, in ``[0, 1]``
            (0 when ``v = 0``).
    """

    abs_sum: Tensor
    sum_abs: Tensor
    normalized: Tensor


def group_terms(
    group: SymmetryGroup, v: Mapping[str, Tensor], theta: Mapping[str, Tensor], layout: ParamLayout
) -> tuple[Tensor, Tensor]:
    """Per-neuron ``d_j = <v_j, theta_tilde_j>`` and weights ``||v_j|| ||theta_tilde_j||``.

    Args:
        group: the symmetry group.
        v: named slices of ``v``, each ``[*batch, *param_shape]``.
        theta: named parameters, each ``[*param_shape]`` or ``[*batch, *param_shape]``.
        layout: gives each parameter's own shape.

    Returns:
        ``(d, weight)``, both ``[*batch, J]`` with ``J`` the group's number of constraints.
    """
    shapes = dict(zip(layout.names, layout.shapes, strict=True))
    if group.kind == "translation":
        return _translation_terms(group, v, shapes)
    d = v_sq = theta_sq = 0
    for name in group.incoming:  # row j of each: [*batch, n, ...] -> [*batch, n]
        ndim = len(shapes[name])
        d = d + _rows_sum(v[name] * theta[name], ndim)
        v_sq = v_sq + _rows_sum(v[name].square(), ndim)
        theta_sq = theta_sq + _rows_sum(theta[name].square(), ndim)
    for name in group.outgoing:  # column j of the next weight [*batch, m, n] -> [*batch, n]
        d = d - (v[name] * theta[name]).sum(-2)
        v_sq = v_sq + v[name].square().sum(-2)
        theta_sq = theta_sq + theta[name].square().sum(-2)
    return d, (v_sq * theta_sq).sqrt()


def _rows_sum(x: Tensor, param_ndim: int) -> Tensor:
    """Sum ``x[*batch, n, *rest]`` over ``rest`` (the ``param_ndim - 1`` trailing dims)."""
    return x.sum(dim=tuple(range(-param_ndim + 1, 0))) if param_ndim > 1 else x


def _translation_terms(
    group: SymmetryGroup, v: Mapping[str, Tensor], shapes: Mapping[str, torch.Size]
) -> tuple[Tensor, Tensor]:
    """Translation: ``d_i = sum_k v[k, i]`` per column of ``W`` and ``d_b = sum_k v_b[k]``;
    ``||theta_tilde|| = sqrt(number of classes)``."""
    d, weight = [], []
    for name in group.incoming:
        ndim, classes = len(shapes[name]), shapes[name][0]
        lead = v[name].shape[: v[name].ndim - ndim]
        d.append(v[name].sum(-ndim).reshape(*lead, -1))  # [*batch, columns or 1]
        v_norm = v[name].square().sum(-ndim).sqrt().reshape(*lead, -1)
        weight.append(v_norm * classes**0.5)
    return torch.cat(d, -1), torch.cat(weight, -1)


def deviation(d: Tensor, weight: Tensor) -> Deviation:
    """:class:`Deviation` from per-constraint ``d[*batch, J]`` and ``weight[*batch, J]``.

    >>> s = deviation(torch.tensor([1.0, -2.0]), torch.tensor([2.0, 4.0]))
    >>> s.abs_sum.item(), s.sum_abs.item(), s.normalized.item()
    (1.0, 3.0, 0.5)
    """
    sum_abs = d.abs().sum(-1)
    tiny = torch.finfo(weight.dtype).tiny
    return Deviation(d.sum(-1).abs(), sum_abs, sum_abs / weight.sum(-1).clamp_min(tiny))


def symmetry_deviations(
    v: Tensor, theta: Tensor, groups: Sequence[SymmetryGroup], layout: ParamLayout
) -> dict[SymmetryKind, Deviation]:
    """Deviation of ``v[*batch, D]`` from every symmetry of the model at ``theta[D]``.

    Groups of the same kind (one per hidden layer) are pooled: their constraints are
    concatenated before reducing, so ``sum_j`` runs over all neurons of all layers.

    Args:
        v: flat vectors in ``layout`` order: ``-u`` for an update ``u``, or a gradient.
        theta: flat parameters before the step, ``[D]`` or ``[*batch, D]``.
        groups: e.g. ``MLP.symmetry_groups()``.
        layout: the flat layout of ``v`` and ``theta``.

    Returns:
        ``kind -> Deviation`` for each kind present in ``groups``.
    """
    v_named, theta_named = layout.unflatten(v), layout.unflatten(theta)
    terms: dict[SymmetryKind, list[tuple[Tensor, Tensor]]] = {}
    for group in groups:
        terms.setdefault(group.kind, []).append(group_terms(group, v_named, theta_named, layout))
    return {
        kind: deviation(torch.cat([d for d, _ in parts], -1), torch.cat([w for _, w in parts], -1))
        for kind, parts in terms.items()
    }
