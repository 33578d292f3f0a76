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


class OptimizeeModule(L.LightningModule):
    """Train an :class:`~l2o_lightning.optimizees.MLP` with automatic optimization.

    Logs ``train/loss`` and ``train/acc`` every optimizee step, and ``test/loss`` and
    ``test/acc`` over the MNIST test split at every validation (every
    ``trainer.val_check_interval`` steps and after the last step, ``trainer.max_steps``) and in
    ``l2o test``.

    Args:
        hidden: hidden layer widths (paper: ``[20]``).
        activation: ``leaky_relu``, ``relu``, ``sigmoid`` or ``linear``.
        batchnorm: BatchNorm (affine, no running stats) before every hidden activation.
    """

    def __init__(
        self, hidden: list[int] = [20], activation: str = "leaky_relu", batchnorm: bool = False  # noqa: B006
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.optimizee = MLP(hidden, activation, batchnorm)
        self.train_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.test_loss = MeanMetric()

    def forward(self, x: Tensor) -> Tensor:
        return self.optimizee(x)

    def model_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits, y), logits, y

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, logits, y = self.model_step(batch)
        if not torch.isfinite(loss):
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
        return (
            f"the optimizee diverged: train loss is {loss.item()} at step {self.global_step} "
            f"with optimizer {optimizer}. Lower its learning rate (`--optimizer.lr`) or check the "
            "optimizer checkpoint; logs written so far are kept."
        )

    def configure_optimizers(self) -> None:
        raise ConfigError(
            "no optimizer configured for the optimizee: add an optimizer config, e.g. "
            "`-c configs/optimizers/adam.yaml`, or `--optimizer Adam --optimizer.lr 0.03` "
            "(any torch.optim.Optimizer class path, e.g. lion_pytorch.Lion)."
        )
