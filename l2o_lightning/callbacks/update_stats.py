"""UpdateStatsProbe: sizes of the applied update and per-parameter histograms (paper's
update-size and histogram plots)."""

from __future__ import annotations

from torch import Tensor

from l2o_lightning.callbacks.base import AppliedUpdateProbe
from l2o_lightning.dynamics.histograms import magnitude_edges
from l2o_lightning.optimizees import MLP
from l2o_lightning.steps import HISTOGRAM_STEPS, probe_due

HISTOGRAM_BINS = 64


class UpdateStatsProbe(AppliedUpdateProbe):
    """Logs ``update/abs_mean`` (mean ``|u|``), ``update/abs_max`` (max ``|u|``),
    ``update/norm`` (``||u||_2``) of the applied update ``u``, and per parameter tensor the
    histograms ``update_hist/<param>`` of ``|u|`` (log-spaced bins,
    :func:`~l2o_lightning.dynamics.histograms.magnitude_edges`) and ``grad_hist/<param>`` of the
    gradient (equal-width bins), ``HISTOGRAM_BINS`` each.

    Args:
        every_n_steps: the scalars and histograms at the 1-based optimizee steps 1 and every
            multiple of this (:func:`~l2o_lightning.steps.probe_due`).
        histogram_steps: 1-based optimizee steps that also get histograms (the paper's
            Fig. 9: :data:`~l2o_lightning.steps.HISTOGRAM_STEPS`), logged at ``global_step = k - 1``.
    """

    def __init__(self, every_n_steps: int = 10, histogram_steps: tuple[int, ...] = HISTOGRAM_STEPS) -> None:
        super().__init__(every_n_steps)
        self.histogram_steps = frozenset(histogram_steps)

    def due_at(self, step: int) -> bool:
        return self._logger is not None and probe_due(step, self.every_n_steps, self.histogram_steps)

    def observe(self, step: int, model: MLP, theta: Tensor, grad: Tensor, update: Tensor) -> None:
        size, grad = update.abs().cpu(), grad.cpu()  # torch.histogram runs on the CPU
        if probe_due(step, self.every_n_steps):
            self.log_scalars(
                {"update/abs_mean": size.mean(), "update/abs_max": size.max(), "update/norm": update.norm()},
                step,
            )
        for name, where in model.layout.slices.items():
            edges = magnitude_edges(size[where], HISTOGRAM_BINS)
            self.log_histogram(f"update_hist/{name}", size[where], step, edges)
            self.log_histogram(f"grad_hist/{name}", grad[where], step, HISTOGRAM_BINS)
