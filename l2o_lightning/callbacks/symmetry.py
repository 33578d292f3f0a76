"""SymmetryProbe: deviation of the applied update and of the gradient from the
symmetry-induced constraints (paper Fig. 1)."""

from __future__ import annotations

from dataclasses import fields

from torch import Tensor

from l2o_lightning.callbacks.base import AppliedUpdateProbe
from l2o_lightning.dynamics.symmetry import symmetry_deviations
from l2o_lightning.optimizees import MLP


class SymmetryProbe(AppliedUpdateProbe):
    """Logs ``symmetry/{kind}/{update,grad}/{abs_sum,sum_abs,normalized}`` for every kind the
    optimizee has (``rescale``, ``scale``, ``translation``), with ``v = -u`` for the applied
    update ``u`` and ``v = g`` for the batch gradient (~0: a correctness check).

    Args:
        every_n_steps: probe the 1-based optimizee steps 1 and every multiple of this.
    """

    def observe(self, step: int, model: MLP, theta: Tensor, grad: Tensor, update: Tensor) -> None:
        groups = model.symmetry_groups()
        scalars = {}
        for source, v in (("update", -update), ("grad", grad)):
            for kind, dev in symmetry_deviations(v, theta, groups, model.layout).items():
                for stat in fields(dev):
                    scalars[f"symmetry/{kind}/{source}/{stat.name}"] = getattr(dev, stat.name)
        self.log_scalars(scalars, step)
