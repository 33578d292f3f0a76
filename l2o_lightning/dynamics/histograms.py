"""Histograms of update sizes and gradients as TensorBoard stores them, binned by torch (the
TensorBoard writer's numpy binning costs several times more), with log-spaced bins for
magnitudes."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Histogram(NamedTuple):
    """A histogram in the fields of TensorBoard's ``add_histogram_raw``: the values' ``min``,
    ``max``, count ``num``, ``sum = sum_j v_j``, ``sum_squares = sum_j v_j^2``, and per bucket
    its right edge (``bucket_limits``) and count (``bucket_counts``)."""

    min: float
    max: float
    num: int
    sum: float
    sum_squares: float
    bucket_limits: list[float]
    bucket_counts: list[float]


def histogram(values: Tensor, bins: int | Tensor) -> Histogram:
    """A histogram of CPU ``values`` with ``bins`` equal-width bins or the given float64
    edges ``e_0 < ... < e_B`` (bucket ``k`` counts ``e_k <= v < e_{k+1}``, the last one
    ``v <= e_B`` too), binned by ``torch.histogram`` in float64.

    >>> histogram(torch.tensor([0.0, 1.0, 1.0, 3.0]), 3).bucket_counts
    [1.0, 2.0, 1.0]
    """
    counts, edges = torch.histogram(values.double(), bins)
    return Histogram(
        min=values.min().item(), max=values.max().item(), num=values.numel(),
        sum=values.sum().item(), sum_squares=values.square().sum().item(),
        bucket_limits=edges[1:].tolist(), bucket_counts=counts.tolist(),
    )


def magnitude_edges(size: Tensor, bins: int) -> Tensor | int:
    """Bin edges for values ``>= 0`` that resolve magnitudes on a log axis: ``0``, then
    ``bins`` log-spaced edges ``e_k = lo (hi / lo)^(k / (bins - 1))``, ``k = 0..bins-1``, from the
    smallest positive value ``lo`` to the largest ``hi`` (so exact zeros, and only they, fall in
    the first bucket); ``bins`` equal-width bins when there
    are fewer than two distinct positive values.

    >>> magnitude_edges(torch.tensor([0.0, 1e-3, 1e-1, 1e1]), 3)
    tensor([0.0000e+00, 1.0000e-03, 1.0000e-01, 1.0000e+01], dtype=torch.float64)
    """
    positive = size[size > 0].double()
    if positive.numel() == 0 or positive.min() == positive.max():
        return bins
    lo, hi = positive.min(), positive.max()
    edges = torch.logspace(lo.log10().item(), hi.log10().item(), bins, dtype=torch.float64)
    edges[0], edges[-1] = lo, hi  # exact ends despite rounding in logspace
    return torch.cat([edges.new_zeros(1), edges])
