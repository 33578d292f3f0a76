"""CovarianceProbe: top eigenvalue and trace of the update covariance (paper Fig. 3 right)."""

from __future__ import annotations

from l2o_lightning.callbacks.base import NoiseProbe
from l2o_lightning.dynamics.covariance import covariance_stats
from l2o_lightning.dynamics.noise import Noise


class CovarianceProbe(NoiseProbe):
    """Logs ``covariance/top_eig`` and ``covariance/trace`` of
    ``K = (1/M) sum_i (U(g_i) - u_ref)(U(g_i) - u_ref)^T`` over the pool's units, ``u_ref`` the
    centre chosen by ``reference`` (:meth:`~l2o_lightning.dynamics.noise.Noise.update_ref`;
    with ``mean_update``, ``K`` is the updates' covariance). The paper: ``num_units: 93``
    (20 % of the training loader), ``reference: mean_update``.

    Args:
        every_n_steps: probe the 1-based optimizee steps 1 and every multiple of this.
        num_units: ``M``, units in the pool, or ``all`` (every minibatch of one loader pass).
        unit: ``batch`` (a training-size minibatch) or ``sample``.
        seed: seed of the pool.
        reference: ``mean_update`` (``u_ref = mean_i U(g_i)``) or ``update_of_mean``
            (``u_ref = U(g_ref)``, ``g_ref`` the pool's mean gradient).
    """

    def observe(self, step: int, noise: Noise) -> None:
        stats = covariance_stats(noise.updates, noise.update_ref(self.reference))
        self.log_scalars({"covariance/top_eig": stats.top_eig, "covariance/trace": stats.trace}, step)
