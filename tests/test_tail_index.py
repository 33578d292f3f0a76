"""Tail index estimator on symmetric alpha-stable samples with known alpha."""

import math

import pytest
import torch
from scipy.stats import levy_stable

from l2o_lightning.dynamics.tail_index import block_size, tail_index

# the estimator's own spread at K = 1e5 (std over draws) is about 0.011, 0.018, 0.027, 0.039
# for alpha = 0.8, 1.2, 1.6, 2.0: one draw, fixed here, is checked against +-0.05
RANDOM_STATE = 10


@pytest.fixture(scope="module", params=[0.8, 1.2, 1.6, 2.0])
def stable(request):
    alpha = request.param
    return alpha, torch.tensor(levy_stable.rvs(alpha, 0.0, size=100_000, random_state=RANDOM_STATE))


def test_tail_index_recovers_alpha(stable):
    alpha, x = stable
    assert abs(tail_index(x).item() - alpha) < 0.05


def test_prime_sample_count_gives_a_finite_accurate_estimate(stable):
    alpha, x = stable
    k = 99_991  # prime: its only divisor below sqrt(k) is 1, so a few samples are dropped
    assert block_size(k) == (316, 316 * 316)
    estimate = tail_index(x[:k].float())
    assert estimate.dtype == torch.float32 and math.isfinite(estimate.item())
    assert abs(estimate.item() - alpha) < 0.05


def test_block_size_uses_every_sample_when_a_large_divisor_exists():
    assert block_size(4096) == (64, 4096)
    assert block_size(32 * 15910) == (688, 32 * 15910)  # 509120 = 688 * 740, sqrt = 713.5
    with pytest.raises(ValueError, match="at least 4 samples"):
        block_size(3)


