"""Spectrum of the update (or gradient) covariance across noise units without forming the
``D x D`` matrix: ``K = C^T C / M`` and the Gram matrix ``G = C C^T / M`` share their nonzero
eigenvalues and their trace, and ``G`` is only ``M x M``."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class CovarianceStats(NamedTuple):
    """Top eigenvalue and trace of a covariance matrix (scalars)."""

    top_eig: Tensor
    trace: Tensor


def covariance_stats(rows: Tensor, reference: Tensor) -> CovarianceStats:
    """Top eigenvalue and trace of ``K = (1/M) sum_i (u_i - u_ref)(u_i - u_ref)^T``.

    With ``C = rows - reference`` (``[M, D]``), computed from ``G = C C^T / M`` (``[M, M]``)
    with ``torch.linalg.eigvalsh`` in float64; the results have the input's dtype.

    >>> stats = covariance_stats(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.zeros(2))
    >>> stats.top_eig.item(), stats.trace.item()
    (1.0, 1.0)

    Args:
        rows: ``u_i``, one per unit, ``[M, D]``.
        reference: ``u_ref``, ``[D]`` (``rows.mean(0)``: ``K`` is the rows' covariance).
    """
    c = rows - reference  # [M, D]
    gram = (c @ c.T).double() / len(c)  # [M, M]
    top = torch.linalg.eigvalsh(gram)[-1]
    return CovarianceStats(top.to(rows.dtype), gram.trace().to(rows.dtype))
