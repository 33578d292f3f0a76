"""Pure math of the training-dynamics probes (no Lightning): symmetry deviation, tail index,
update covariance, unit gradients and optimizer update rules."""

from l2o_lightning.dynamics.covariance import CovarianceStats, covariance_stats
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
    "block_size",
    "coupled_sample_gradients",
    "covariance_stats",
    "pool_gradients",
    "register_update_rule",
    "symmetry_deviations",
    "tail_index",
    "unit_gradients",
    "updates",
]
