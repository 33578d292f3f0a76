"""UpdateStatsProbe: sizes of the applied update and per-parameter histograms (paper's
update-size and histogram plots)."""

from __future__ import annotations

from torch import Tensor

from l2o_lightning.callbacks.base import AppliedUpdateProbe
from l2o_lightning.optimizees import MLP

HISTOGRAM_BINS = 64


class UpdateStatsProbe(AppliedUpdateProbe):
    """Logs ``update/abs_mean`` (mean ``|u|``), ``update/abs_max`` (max ``|u|``),
    ``update/norm`` (``||u||_2``) of the applied update ``u``, and histograms of ``|u|``
    (``update_hist/<param>``) and of the gradient (``grad_hist/<param>``) per parameter tensor,
    with ``HISTOGRAM_BINS`` equal-width bins.

    Args:
        every_n_steps: probe the steps whose ``global_step`` is a multiple of this.
    """

    def observe(self, step: int, model: MLP, theta: Tensor, grad: Tensor, update: Tensor) -> None:
        size = update.abs()
        self.log_scalars(
            {"update/abs_mean": size.mean(), "update/abs_max": size.max(), "update/norm": update.norm()}, step
        )
        for name, where in model.layout.slices.items():
            self.log_histogram(f"update_hist/{name}", size[where], step, HISTOGRAM_BINS)
            self.log_histogram(f"grad_hist/{name}", grad[where], step, HISTOGRAM_BINS)
