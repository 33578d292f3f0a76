"""CovarianceProbe: top eigenvalue and trace of the update covariance (paper Fig. 3 right)."""

from __future__ import annotations

from l2o_lightning.callbacks.base import Noise, NoiseProbe
from l2o_lightning.dynamics.covariance import covariance_stats


class CovarianceProbe(NoiseProbe):
    """Logs ``covariance/top_eig`` and ``covariance/trace`` of
    ``K = (1/M) sum_i (U(g_i) - U(g_ref))(U(g_i) - U(g_ref))^T`` over the pool's units.

    Args:
        every_n_steps: probe the steps whose ``global_step`` is a multiple of this.
        num_units: ``M``, units in the pool.
        unit: ``batch`` (a training-size minibatch) or ``sample``.
        seed: seed of the pool.
    """

    def observe(self, step: int, noise: Noise) -> None:
        stats = covariance_stats(noise.updates, noise.update_ref)
        self.log_scalars({"covariance/top_eig": stats.top_eig, "covariance/trace": stats.trace}, step)
