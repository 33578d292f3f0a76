"""TailIndexProbe: heavy-tailedness alpha of gradient and update noise (paper Fig. 3 left)."""

from __future__ import annotations

from l2o_lightning.callbacks.base import NoiseProbe
from l2o_lightning.dynamics.noise import Noise
from l2o_lightning.dynamics.tail_index import tail_index


class TailIndexProbe(NoiseProbe):
    """Logs ``tail_index/grad``, alpha of ``g_i - g_ref``, and ``tail_index/update``, alpha of
    ``U(g_i) - u_ref`` (``U`` the optimizer's update rule in its current state), every
    coordinate of every unit one sample; ``g_ref`` is the mean gradient over the pool and
    ``u_ref`` the centre chosen by ``reference`` (:meth:`~l2o_lightning.dynamics.noise.Noise.update_ref`).
    The paper: ``num_units: all`` (the whole training loader), ``reference: mean_update``.

    Args:
        every_n_steps: probe the 1-based optimizee steps 1 and every multiple of this.
        num_units: units in the pool, or ``all`` (every minibatch of one loader pass).
        unit: ``batch`` (a training-size minibatch) or ``sample``.
        seed: seed of the pool.
        reference: ``mean_update`` (``u_ref = mean_i U(g_i)``) or ``update_of_mean``
            (``u_ref = U(g_ref)``).
    """

    def observe(self, step: int, noise: Noise) -> None:
        self.log_scalars(
            {
                "tail_index/grad": tail_index(noise.grads - noise.grad_ref),
                "tail_index/update": tail_index(noise.updates - noise.update_ref(self.reference)),
            },
            step,
        )
