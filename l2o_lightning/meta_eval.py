"""Validation and test of meta-training (:class:`TrajectoryEvaluation`, the evaluation hooks of
:class:`~l2o_lightning.meta.MetaTrainModule`).

Validation and test run whole trajectories of fresh optimizees on the MNIST *training*
split (the optimizee's training loss is what an optimizer is judged by), drawn from a fixed
seed so every evaluation sees the same initialisations and minibatches; the val/test
loaders (the MNIST test split) then measure the final optimizees' test loss and accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Evaluation:
    """Validation and test trajectories (``model.evaluation`` of a meta-training config).

    Args:
        tasks: fresh optimizees trained per validation / test.
        val_n_iters, test_n_iters: their trajectory lengths.
        seed: seed of their initialisations and minibatches; keep it apart from
            ``seed_everything``, which seeds meta-training's.
    """

    tasks: int = 5
    val_n_iters: int = 200
    test_n_iters: int = 1000
    seed: int = 1000

    def __post_init__(self) -> None:
        for name in ("tasks", "val_n_iters", "test_n_iters"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"`model.evaluation.{name}` must be positive, got {getattr(self, name)}.")


def own_tasks(tasks: int, rank: int, world_size: int) -> slice:
    """The evaluation tasks process ``rank`` of ``world_size`` trains: ``rank``,
    ``rank + world_size``, ... (``slice(rank, tasks, world_size)``; none when ``rank >= tasks``).

    >>> [list(range(5))[own_tasks(5, rank, 2)] for rank in (0, 1)]
    [[0, 2, 4], [1, 3]]
    """
    return slice(rank, tasks, world_size)


def pad_tasks(values: Tensor, tasks: int, world_size: int) -> Tensor:
    """A process's ``[own tasks, ...]`` rows padded with NaN to ``ceil(tasks / world_size)``,
    the most any process owns, so every process gathers the same shape."""
    width = -(-tasks // world_size)
    padding = values.new_full((width - len(values), *values.shape[1:]), float("nan"))
    return torch.cat([values, padding])


def gather_tasks(gathered: Tensor, tasks: int) -> Tensor:
    """All ``tasks`` rows, in task order, from the processes' padded rows gathered as
    ``[world_size, width, ...]``: task ``t`` is row ``t // world_size`` of process
    ``t % world_size`` (:func:`own_tasks`).

    >>> rows = torch.tensor([[0.0, 2.0, 4.0], [1.0, 3.0, float("nan")]])[..., None]
    >>> gather_tasks(rows, 5).flatten().tolist()
    [0.0, 1.0, 2.0, 3.0, 4.0]
    """
    return gathered.transpose(0, 1).flatten(0, 1)[:tasks]


class TrajectoryEvaluation:
    """The validation and test hooks of a ``LightningModule`` that meta-trains ``self.net`` on
    ``self.optimizee`` and starts trajectories with ``self.fresh_trajectory(tasks, seed,
    round_)`` (a mixin ahead of ``LightningModule``; what they log: :class:`MetaTrainModule`).
    :meth:`init_evaluation` sets up their settings and metrics."""

    def init_evaluation(self, evaluation: Evaluation) -> None:
        """Keep the evaluation settings and set up the final optimizees' test-split metrics; call
        after ``LightningModule.__init__``."""
        self.evaluation = evaluation
        self.eval_final_params: Tensor | None = None
        self.final_test_loss = MeanMetric()
        self.final_test_acc = MulticlassAccuracy(num_classes=10, average="micro")

    def on_validation_epoch_start(self) -> None:
        self.evaluate_trajectories("val", self.evaluation.val_n_iters)

    def on_test_epoch_start(self) -> None:
        self.evaluate_trajectories("test", self.evaluation.test_n_iters)

    def evaluate_trajectories(self, stage: str, n_iters: int) -> None:
        """Train ``evaluation.tasks`` fresh optimizees with the current LSTM on the training split;
        log their loss curve and summary, keep the final parameters for the test split.

        Under DDP each process trains its share of them (:func:`own_tasks`) and all gather
        the losses and final parameters, so every process logs and tests all of them: the
        numbers one process with every task would have."""
        tasks, world_size = self.evaluation.tasks, self.trainer.world_size
        mine = own_tasks(tasks, self.global_rank, world_size)
        losses, final_params = self.train_own_tasks(stage, n_iters, mine)
        if world_size > 1:
            losses = gather_tasks(self.all_gather(pad_tasks(losses.T, tasks, world_size)), tasks).T
            final_params = gather_tasks(self.all_gather(pad_tasks(final_params, tasks, world_size)), tasks)
        self.eval_final_params = final_params
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

    def train_own_tasks(self, stage: str, n_iters: int, mine: slice) -> tuple[Tensor, Tensor]:
        """Losses ``[n_iters, own tasks]`` and final parameters ``[own tasks, D]`` of this
        process's evaluation tasks ``mine``, each with the initialisation and minibatches it
        has in one process with every task."""
        x, y, batch_size = self.training_split()
        tasks, seed = self.evaluation.tasks, self.evaluation.seed
        own, device = range(tasks)[mine], self.device
        if not own:  # more processes than evaluation tasks
            return torch.empty(n_iters, 0, device=device), torch.empty(0, self.optimizee.numel, device=device)
        minibatches = (  # [own tasks, B, ...]: one minibatch per optimizee and step
            (xb.view(tasks, batch_size, -1)[mine].to(device), yb.view(tasks, batch_size)[mine].to(device))
            for xb, yb in EndlessMinibatches(x, y, batch_size, seed, batches_per_item=tasks)
        )
        shown = self.trainer.progress_bar_callback is not None and self.trainer.is_global_zero
        description = f"{stage} trajectories ({len(own)} of {tasks} optimizees on this process)"
        with tqdm(minibatches, description, n_iters, leave=False, unit="step", disable=not shown) as steps:
            start = self.fresh_trajectory(own, seed, round_=0)
            return run_trajectories(self.net, self.optimizee, start, iter(steps), n_iters)

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
