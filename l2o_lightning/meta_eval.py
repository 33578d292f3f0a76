"""Validation and test of meta-training (:class:`TrajectoryEvaluation`, the evaluation hooks of
:class:`~l2o_lightning.meta.MetaTrainModule`).

Validation and test run whole trajectories of fresh optimizees on the MNIST *training*
split (the optimizee's training loss is what an optimizer is judged by), drawn from a fixed
seed so every evaluation sees the same initialisations and minibatches; the val/test
loaders (the MNIST test split) then measure the final optimizees' test loss and accuracy.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import vmap
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from tqdm.auto import tqdm

from l2o_lightning.data import EndlessMinibatches
from l2o_lightning.errors import ConfigError
from l2o_lightning.unroll import run_trajectories

# 1-based optimizee steps of a validation trajectory whose loss is logged as val/loss_curve/step_<k>
VAL_CURVE_STEPS = (1, 10, 20, 50, 100, 200, 500, 1000)


class TrajectoryEvaluation:
    """The validation and test hooks of a ``LightningModule`` that meta-trains ``self.net`` on
    ``self.optimizee`` and starts trajectories with ``self.fresh_trajectory(tasks, seed,
    round_)`` (a mixin ahead of ``LightningModule``; what they log: :class:`MetaTrainModule`).
    :meth:`init_evaluation` sets up their settings and metrics."""

    def init_evaluation(self, eval_tasks: int, val_n_iters: int, test_n_iters: int, eval_seed: int) -> None:
        """Keep the evaluation settings (:class:`MetaTrainModule`'s arguments of the same names)
        and set up the final optimizees' test-split metrics; call after ``LightningModule.__init__``."""
        self.eval_tasks, self.eval_seed = eval_tasks, eval_seed
        self.val_n_iters, self.test_n_iters = val_n_iters, test_n_iters
        self.eval_final_params: Tensor | None = None
        self.final_test_loss = MeanMetric()
        self.final_test_acc = MulticlassAccuracy(num_classes=10, average="micro")

    def on_validation_epoch_start(self) -> None:
        self.evaluate_trajectories("val", self.val_n_iters)

    def on_test_epoch_start(self) -> None:
        self.evaluate_trajectories("test", self.test_n_iters)

    def evaluate_trajectories(self, stage: str, n_iters: int) -> None:
        """Train ``eval_tasks`` fresh optimizees with the current LSTM on the training split;
        log their loss curve and summary, keep the final parameters for the test split."""
        x, y, batch_size = self.training_split()
        tasks, seed = self.eval_tasks, self.eval_seed
        start = self.fresh_trajectory(range(tasks), seed, round_=0)
        minibatches = (  # [tasks, B, ...]: one minibatch per optimizee and step
            (xb.view(tasks, batch_size, -1).to(self.device), yb.view(tasks, batch_size).to(self.device))
            for xb, yb in EndlessMinibatches(x, y, batch_size, seed, batches_per_item=tasks)
        )
        shown = self.trainer.progress_bar_callback is not None and self.trainer.is_global_zero
        description = f"{stage} trajectories ({tasks} optimizees)"
        with tqdm(minibatches, description, n_iters, leave=False, unit="step", disable=not shown) as steps:
            losses, self.eval_final_params = run_trajectories(
                self.net, self.optimizee, start, iter(steps), n_iters
            )
        curve = losses.mean(1).tolist()
        if stage == "test":
            for logger in self.loggers:
                for step, value in enumerate(curve):
                    logger.log_metrics({"test/loss_curve": value}, step=step)
        else:
            points = {f"val/loss_curve/step_{k}": curve[k - 1] for k in VAL_CURVE_STEPS if k <= n_iters}
            self.log_dict(points, sync_dist=True)
        self.log(f"{stage}/final_loss", curve[-1], sync_dist=True)
        self.log(f"{stage}/mean_loss", sum(curve) / len(curve), prog_bar=True, sync_dist=True)

    def training_split(self) -> tuple[Tensor, Tensor, int]:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "train_tensors"):
            raise ConfigError(
                "meta-validation trains optimizees on the datamodule's `train_tensors`: "
                "use `data: l2o_lightning.data.MNISTDataModule` (the default of `l2o`)."
            )
        return *datamodule.train_tensors, datamodule.batch_size

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        params = self.eval_final_params
        logits = vmap(self.optimizee.functional_logits, in_dims=(0, None))(params, x)
        targets = y.expand(len(params), -1)
        losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        self.final_test_loss.update(losses)
        self.final_test_acc(logits.flatten(0, 1), targets.flatten())
        stage = "test" if self.trainer.testing else "val"
        self.log(f"{stage}/final_test_loss", self.final_test_loss)
        self.log(f"{stage}/final_test_acc", self.final_test_acc)

    test_step = validation_step
