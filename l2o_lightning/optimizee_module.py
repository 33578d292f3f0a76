"""OptimizeeModule: an MNIST MLP trained by any pluggable ``torch.optim`` optimizer
(meta-testing). The optimizer comes from LightningCLI's ``optimizer:`` class path."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from l2o_lightning.errors import ConfigError, DivergenceError
from l2o_lightning.optimizees import MLP

BLOWUP_FACTOR = 1e6  # a train loss above this multiple of the run's first one has diverged


class OptimizeeModule(L.LightningModule):
    """Train an :class:`~l2o_lightning.optimizees.MLP` with automatic optimization.

    Logs ``train/loss`` and ``train/acc`` every optimizee step, and ``test/loss`` and
    ``test/acc`` over the MNIST test split at every validation (every
    ``trainer.val_check_interval`` steps and after the last step, ``trainer.max_steps``) and in
    ``l2o test``.

    Args:
        hidden: hidden layer widths (paper: ``[20]``).
        activation: ``leaky_relu``, ``relu``, ``sigmoid`` or ``linear``.
        batchnorm: BatchNorm (affine) before every hidden activation.
        track_running_stats: its running statistics, which the test split's eval mode uses
            (the paper's); otherwise eval mode normalises with each test batch's statistics.

    Divergence: a train loss that is not finite, or above :data:`BLOWUP_FACTOR` (1e6) times the
    run's first train loss (finite but blown up, e.g. 4e18 from 2.3), stops the run with
    :class:`DivergenceError` (``l2o`` exit code 3) naming the step and the optimizer, before
    that step is logged or taken.
    """

    def __init__(
        self, hidden: list[int] = [20], activation: str = "leaky_relu", batchnorm: bool = False,  # noqa: B006
        track_running_stats: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.optimizee = MLP(hidden, activation, batchnorm, track_running_stats=track_running_stats)
        self.train_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.test_loss = MeanMetric()
        self.first_loss: float | None = None  # the run's first train loss (saved in checkpoints)

    def forward(self, x: Tensor) -> Tensor:
        return self.optimizee(x)

    def model_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits, y), logits, y

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, logits, y = self.model_step(batch)
        if self.first_loss is None and torch.isfinite(loss):
            self.first_loss = loss.item()
        if not torch.isfinite(loss) or loss > BLOWUP_FACTOR * self.first_loss:
            raise DivergenceError(self._divergence_message(loss))
        self.train_acc(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if 0 < self.trainer.max_steps <= self.global_step:
            self.trainer.should_stop = True  # stopping this way validates at the end, whatever the interval

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, logits, y = self.model_step(batch)
        self.test_loss.update(loss, weight=len(y))
        self.test_acc(logits, y)
        self.log("test/loss", self.test_loss, prog_bar=True)
        self.log("test/acc", self.test_acc, prog_bar=True)

    test_step = validation_step

    def _divergence_message(self, loss: Tensor) -> str:
        optimizer = type(self.trainer.optimizers[0]).__name__ if self.trainer.optimizers else "?"
        finite = bool(torch.isfinite(loss))
        blowup = f" (over {BLOWUP_FACTOR:g} x its first, {self.first_loss:.4g})" if finite else ""
        remedy = "Lower its learning rate (`--optimizer.lr`)"
        if optimizer == "L2O":
            remedy = ("Lower the learned optimizer's output scale (`--optimizer.out_mult`) or check its "
                      "checkpoint (`--optimizer.checkpoint`)")
        return (
            f"the optimizee diverged: train loss is {loss.item():.4g} at step {self.global_step} "
            f"with optimizer {optimizer}{blowup}. {remedy}; logs written so far are kept."
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["first_loss"] = self.first_loss

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.first_loss = checkpoint.get("first_loss")

    def configure_optimizers(self) -> None:
        raise ConfigError(
            "no optimizer configured for the optimizee: add an optimizer config, e.g. "
            "`-c configs/optimizers/adam.yaml`, or `--optimizer Adam --optimizer.lr 0.03` "
            "(any torch.optim.Optimizer class path, e.g. lion_pytorch.Lion)."
        )
