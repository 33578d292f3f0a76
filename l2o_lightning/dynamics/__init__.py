"""Pure math of the training-dynamics probes (no Lightning): symmetry deviation, tail index,
update covariance, unit gradients and their noise, optimizer update rules, flat layouts and
histograms."""

from l2o_lightning.dynamics.covariance import CovarianceStats, covariance_stats
from l2o_lightning.dynamics.histograms import Histogram, histogram, magnitude_edges
from l2o_lightning.dynamics.layout import flat_grad, optimizer_index
from l2o_lightning.dynamics.noise import Noise, pool_noise
from l2o_lightning.dynamics.per_sample import (
    coupled_sample_gradients,
    pool_gradients,
    unit_gradients,
)
from l2o_lightning.dynamics.symmetry import Deviation, symmetry_deviations
from l2o_lightning.dynamics.tail_index import block_size, tail_index
from l2o_lightning.dynamics.update_rules import register_update_rule, updates

__all__ = [
    "CovarianceStats",
    "Deviation",
    "Histogram",
    "Noise",
    "block_size",
    "coupled_sample_gradients",
    "covariance_stats",
    "flat_grad",
    "histogram",
    "magnitude_edges",
    "optimizer_index",
    "pool_gradients",
    "pool_noise",
    "register_update_rule",
    "symmetry_deviations",
    "tail_index",
    "unit_gradients",
    "updates",
]
