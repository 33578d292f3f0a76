"""A TensorBoard logger whose resumed runs continue their curves without duplicates."""

from __future__ import annotations

from collections.abc import Mapping

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter

from l2o_lightning.tb import last_logged_steps


class ContinuingSummaryWriter(SummaryWriter):
    """torch's ``SummaryWriter`` that leaves out the scalars and histograms already on disk:
    a point ``(tag, step)`` at or before ``logged[tag]`` is not written.

    Args:
        logged: the last step of each tag in the folder's earlier event files
            (:func:`~l2o_lightning.tb.last_logged_steps`).
        **kwargs: ``SummaryWriter``'s.
    """

    def __init__(self, logged: Mapping[str, int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.logged = dict(logged)

    def is_logged(self, tag: str, step: int | None) -> bool:
        """Whether the folder's earlier event files hold ``tag`` at ``step`` or a later step."""
        return step is not None and step <= self.logged.get(tag, -1)

    def add_scalar(self, tag: str, scalar_value, global_step: int | None = None, *args, **kwargs) -> None:
        if not self.is_logged(tag, global_step):
            super().add_scalar(tag, scalar_value, global_step, *args, **kwargs)

    def add_histogram(self, tag: str, values, global_step: int | None = None, *args, **kwargs) -> None:
        if not self.is_logged(tag, global_step):
            super().add_histogram(tag, values, global_step, *args, **kwargs)

    def add_histogram_raw(
        self, tag: str, min, max, num, sum, sum_squares, bucket_limits, bucket_counts,
        global_step: int | None = None, walltime: float | None = None,
    ) -> None:
        if not self.is_logged(tag, global_step):
            super().add_histogram_raw(
                tag, min, max, num, sum, sum_squares, bucket_limits, bucket_counts, global_step, walltime
            )


class ResumingTensorBoardLogger(TensorBoardLogger):
    """Lightning's ``TensorBoardLogger`` that continues the run whose version folder it writes into.

    A resumed run (``l2o fit ... --ckpt_path last`` logs into the run it resumes) recomputes the
    steps between its checkpoint and the interruption, and the interrupted run had already written
    some of them. When the writer opens, this logger reads the last step of every tag in the
    folder's event files, and then writes no scalar or histogram at or before it
    (:class:`ContinuingSummaryWriter`): each curve continues without a gap or a duplicate. In a new
    version folder it is the plain ``TensorBoardLogger``; a repeated evaluation logged into the
    same folder keeps the values written first. Same arguments as ``TensorBoardLogger``.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> SummaryWriter:
        if self._experiment is None:
            logged = last_logged_steps(self.log_dir)  # before this run's own event file exists
            if self.root_dir:
                self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuingSummaryWriter(logged, log_dir=self.log_dir, **self._kwargs)
        return self._experiment
