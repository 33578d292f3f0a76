"""Tail index of heavy-tailed noise: the estimator of Mohammadi et al. (2015, Cor. 2.4) as
used by Simsekli et al. (2019, https://arxiv.org/abs/1901.06053) on gradient noise.

For ``K = K1 * K2`` i.i.d. symmetric alpha-stable samples ``X_i`` and block sums
``Y_k = sum of the k-th block of K1 samples``, ``Y_k`` is ``K1^(1/alpha)`` times an alpha-stable
variable, hence ``1/alpha = (mean log|Y_k| - mean log|X_i|) / log K1``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# added inside the logs as in Simsekli et al.'s code (np.spacing(1)): exact zeros stay finite
LOG_EPS = 2.0**-52


def block_size(k: int) -> tuple[int, int]:
    """``(K1, K_used)``: ``K1`` = the largest divisor of ``k`` not above ``sqrt(k)``, using all
    ``k`` samples; when that divisor is under ``sqrt(k) / 2`` (``k`` prime or nearly so),
    ``K1 = floor(sqrt(k))`` and the last ``k mod K1 < sqrt(k)`` samples are dropped.

    >>> block_size(100_000), block_size(99_991), block_size(12)
    ((250, 100000), (316, 99856), (3, 12))
    """
    if k < 4:
        raise ValueError(f"the tail index needs at least 4 samples, got {k}")
    root = math.isqrt(k)
    k1 = next(d for d in range(root, 0, -1) if k % d == 0)
    if 2 * k1 < math.sqrt(k):
        return root, k - k % root
    return k1, k


def tail_index(samples: Tensor) -> Tensor:
    """Estimated ``alpha`` in ``(0, 2]`` (2: Gaussian-like, smaller: heavier tails) of the
    flattened ``samples``, treated as i.i.d. symmetric alpha-stable draws.

    ``1/alpha = (mean_k log|Y_k| - mean_i log|X_i|) / log K1`` with :func:`block_size`;
    the means accumulate in float64, the result has the input's dtype.
    """
    x = samples.detach().flatten()
    k1, used = block_size(x.numel())
    x = x[:used]
    y = x.view(-1, k1).sum(1)  # [K2] block sums

    def mean_log(z: Tensor) -> Tensor:
        return (z.abs() + LOG_EPS).log().mean(dtype=torch.float64)

    return (math.log(k1) / (mean_log(y) - mean_log(x))).to(samples.dtype)
