"""Meta-training of the LSTM optimizer over truncated, unrolled optimizee trajectories
(Andrychowicz et al. 2016, https://arxiv.org/abs/1606.04474).

A trajectory is a fresh optimizee trained for ``n_iters`` steps by the LSTM; it is cut
into truncations of ``unroll`` steps. Within a truncation the optimizee parameters carry
the autograd graph through the LSTM updates; the optimizee gradients are inputs
(detached: no second derivatives, as in the paper). After each truncation the
meta-optimizer steps and parameters and LSTM states are detached (:meth:`Trajectory.detach`,
the one place the graph is cut).

Data: a training step receives one truncation of minibatches from the datamodule
(``data.batches_per_step = model.unroll``). Validation and test run whole trajectories of
fresh optimizees on the MNIST *training* split (the optimizee's training loss is what an
optimizer is judged by), drawn from a fixed seed so every evaluation sees the same
initialisations and minibatches; the val/test loaders (the MNIST test split) then measure
the final optimizees' test loss and accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Literal, TypedDict

import lightning as L
import torch
from torch import Tensor
from torch.func import grad_and_value, vmap
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from l2o_lightning.data import EndlessMinibatches
from l2o_lightning.dynamics.symmetry import symmetry_deviations
from l2o_lightning.errors import ConfigError
from l2o_lightning.learned import LSTMOptimizerNet, LSTMState, checkpoint_entry
from l2o_lightning.optimizees import MLP

MetaLossKind = Literal["sum", "log_sum"]
UpdatePenalty = Callable[[Tensor, Tensor], Tensor]


class SymmetryReg(TypedDict, total=False):
    """The symmetry-breaking regularizer (paper Fig. 2): ``beta`` times the ``sum_abs``
    deviation of the L2O's updates from the constraints of the symmetries in ``kinds``."""

    beta: float
    kinds: list[str]


def symmetry_penalty(
    update: Tensor, params: Tensor, optimizee: MLP, kinds: list[str], beta: float
) -> Tensor:
    """``beta * sum_kinds sum_j |<v_j, theta_tilde_j>|`` with ``v = -u``, mean over tasks;
    differentiable in ``update`` and ``params`` (``[tasks, D]`` each)."""
    deviations = symmetry_deviations(-update, params, optimizee.symmetry_groups(), optimizee.layout)
    return beta * sum(deviations[kind].sum_abs for kind in kinds).mean()


@dataclass
class Trajectory:
    """The optimizees being trained: parameters ``[tasks, D]``, the LSTM state
    ``[num_layers, tasks, D, hidden]`` and the optimizee step reached."""

    params: Tensor
    state: LSTMState
    step: int = 0

    def detach(self) -> Trajectory:
        """Cut the graph at a truncation boundary: no meta-gradient flows to earlier steps."""
        return Trajectory(self.params.detach(), self.state.detach(), self.step)


def optimizee_loss_and_grad(
    optimizee: MLP, params: Tensor, x: Tensor, y: Tensor
) -> tuple[Tensor, Tensor]:
    """Minibatch loss ``[tasks]`` and its gradient ``[tasks, D]`` at ``params[tasks, D]``
    on ``x[tasks, B, 784]``, ``y[tasks, B]``; both detached from any graph."""
    grad, loss = vmap(grad_and_value(optimizee.functional_loss))(params.detach(), x, y)
    return loss, grad


def first_order_loss(loss: Tensor, grad: Tensor, params: Tensor) -> Tensor:
    """``L + <g, theta - stopgrad(theta)>``: the value of ``L`` with derivative ``g`` with
    respect to ``theta``, i.e. the meta-gradient path through the optimizee loss without
    second derivatives (and without keeping the optimizee's own graph).

    Args:
        loss: ``[tasks]`` minibatch losses at ``params``.
        grad: ``[tasks, D]`` their gradients.
        params: ``[tasks, D]`` parameters carrying the graph.
    """
    return loss + (grad * (params - params.detach())).sum(-1)


def meta_objective(step_losses: Tensor, kind: MetaLossKind) -> Tensor:
    """The meta-loss of a truncation from its step losses ``[steps, tasks]``, averaged over tasks:
    ``sum``: ``sum_t L_t``; ``log_sum``: ``log(sum_t L_t)``."""
    total = step_losses.sum(0)
    return (total.log() if kind == "log_sum" else total).mean()


def learned_step(
    net: Callable[[Tensor, LSTMState], tuple[Tensor, LSTMState]],
    optimizee: MLP,
    params: Tensor,
    state: LSTMState,
    x: Tensor,
    y: Tensor,
) -> tuple[Tensor, LSTMState, Tensor, Tensor]:
    """One optimizee step by the LSTM: ``theta_next = theta + u``, ``u = net(g)``.

    Returns:
        ``(theta_next, state_next, loss, u)``; ``loss[tasks]`` is the minibatch loss at
        ``theta`` in :func:`first_order_loss` form.
    """
    loss, grad = optimizee_loss_and_grad(optimizee, params, x, y)
    update, state = net(grad, state)
    return params + update, state, first_order_loss(loss, grad, params), update


def unroll_truncation(
    net: Callable[[Tensor, LSTMState], tuple[Tensor, LSTMState]],
    optimizee: MLP,
    trajectory: Trajectory,
    xs: Tensor,
    ys: Tensor,
    update_penalty: UpdatePenalty,
) -> tuple[Trajectory, Tensor, Tensor]:
    """Advance a trajectory by one truncation, keeping the graph.

    Args:
        net: the LSTM optimizer.
        optimizee: the functional optimizee.
        trajectory: where the truncation starts (detached).
        xs, ys: one minibatch per step, ``[steps, tasks, B, 784]`` and ``[steps, tasks, B]``.
        update_penalty: ``(update, params) -> scalar`` added to the meta-loss per step.

    Returns:
        The advanced trajectory, the step losses ``[steps, tasks]`` and the summed penalty.
    """
    params, state = trajectory.params, trajectory.state
    losses, penalty = [], params.new_zeros(())
    for x, y in zip(xs, ys, strict=True):
        next_params, state, loss, update = learned_step(net, optimizee, params, state, x, y)
        penalty = penalty + update_penalty(update, params)
        losses.append(loss)
        params = next_params
    return Trajectory(params, state, trajectory.step + len(xs)), torch.stack(losses), penalty


@torch.no_grad()
def run_trajectories(
    net: Callable[[Tensor, LSTMState], tuple[Tensor, LSTMState]],
    optimizee: MLP,
    trajectory: Trajectory,
    minibatches: Iterator[tuple[Tensor, Tensor]],
    n_iters: int,
) -> tuple[Tensor, Tensor]:
    """Train ``tasks`` optimizees for ``n_iters`` steps with a frozen LSTM (no meta-gradient).

    Returns:
        Losses ``[n_iters, tasks]`` (each at the parameters before its step) and the final
        parameters ``[tasks, D]``.
    """
    params, state, losses = trajectory.params, trajectory.state, []
    for x, y in islice(minibatches, n_iters):
        params, state, loss, _ = learned_step(net, optimizee, params, state, x, y)
        losses.append(loss)
    return torch.stack(losses), params


class MetaTrainModule(L.LightningModule):
    """Meta-train :class:`~l2o_lightning.learned.LSTMOptimizerNet` on an MLP optimizee.

    One training step is one truncation (manual optimization). Logs per truncation
    ``meta/loss`` (the meta-objective), ``meta/optimizee_loss`` (mean step loss),
    ``meta/trajectory_step`` (optimizee step at its end) and ``meta/trajectory``. Each
    validation (test) trains ``eval_tasks`` fresh optimizees for ``val_n_iters``
    (``test_n_iters``) steps and logs ``val/final_loss``, ``val/mean_loss`` (the optimizee
    training loss at the last step and averaged over the trajectory, mean over tasks),
    ``val/final_test_loss``, ``val/final_test_acc`` (final optimizees on the MNIST test
    split), and the loss curve ``val/loss_curve/meta_step_<N>`` (``test/loss_curve``) with
    the optimizee step as x-axis; ``test/...`` likewise. Checkpoints carry an ``"l2o"``
    entry that :class:`~l2o_lightning.optim.L2O` loads.

    Args:
        hidden, activation, batchnorm: the optimizee MLP (see :class:`OptimizeeModule`).
        hidden_size, num_layers, preproc_p, out_mult: the LSTM optimizer (paper: 20, 2, 10, 0.1).
        unroll: optimizee steps per truncation (paper: 20).
        n_iters: optimizee steps per trajectory (paper: 200); a multiple of ``unroll``.
        meta_loss: ``sum`` (paper) or ``log_sum`` of the truncation's step losses.
        grad_clip: clip the meta-gradient to this global norm; ``None`` does not clip.
        trajectories: meta-training budget in trajectories (stops the run); ``None`` leaves
            the length to ``trainer.max_steps`` (in truncations).
        eval_tasks: optimizees per validation / test.
        val_n_iters, test_n_iters: their trajectory lengths.
        eval_seed: seed of their initialisations and minibatches; keep it apart from
            ``seed_everything``, which seeds meta-training's.
        compile: run the LSTM's elementwise work through ``torch.compile``
            (:meth:`LSTMOptimizerNet.compile_kernels`).
        symmetry_reg: ``{beta, kinds}`` adds :func:`symmetry_penalty` of every update of a
            truncation to its meta-loss (logged as ``meta/symmetry_penalty``); ``None`` or
            ``beta = 0`` trains without it.
    """

    def __init__(
        self,
        hidden: list[int] = [20],  # noqa: B006
        activation: str = "leaky_relu",
        batchnorm: bool = False,
        hidden_size: int = 20,
        num_layers: int = 2,
        preproc_p: float = 10.0,
        out_mult: float = 0.1,
        unroll: int = 20,
        n_iters: int = 200,
        meta_loss: MetaLossKind = "sum",
        grad_clip: float | None = None,
        trajectories: int | None = None,
        eval_tasks: int = 5,
        val_n_iters: int = 200,
        test_n_iters: int = 1000,
        eval_seed: int = 1000,
        compile: bool = False,
        symmetry_reg: SymmetryReg | None = None,
    ) -> None:
        super().__init__()
        validate_meta_args(unroll, n_iters, meta_loss, trajectories, eval_tasks)
        # evaluation settings stay out of the checkpoint's hyperparameters: `l2o test --ckpt_path`
        # restores those over the command line, and these should stay choosable at test time
        self.save_hyperparameters(
            ignore=["eval_tasks", "val_n_iters", "test_n_iters", "eval_seed", "compile"]
        )
        self.eval_tasks, self.eval_seed = eval_tasks, eval_seed
        self.val_n_iters, self.test_n_iters = val_n_iters, test_n_iters
        self.automatic_optimization = False
        self.optimizee = MLP(hidden, activation, batchnorm)
        self.optimizee.requires_grad_(False)
        self.symmetry_reg = validate_symmetry_reg(symmetry_reg, self.optimizee)
        self.net = LSTMOptimizerNet(hidden_size, num_layers, preproc_p, out_mult)
        if compile:
            self.net.compile_kernels()
        self.trajectory: Trajectory | None = None
        self.trajectories_started = 0
        self.init_generator: torch.Generator | None = None
        self.eval_final_params: Tensor | None = None
        self.final_test_loss = MeanMetric()
        self.final_test_acc = MulticlassAccuracy(num_classes=10, average="micro")

    # ------------------------------------------------------------------ meta-training
    def on_fit_start(self) -> None:
        # seeded like the datamodule: seed_everything fixes the whole meta-training run
        self.init_generator = torch.Generator().manual_seed(torch.initial_seed())

    def fresh_trajectory(self, tasks: int, generator: torch.Generator) -> Trajectory:
        """``tasks`` new optimizee initialisations (``MLP.sample_flat``) and zero LSTM states."""
        params = torch.stack([self.optimizee.sample_flat(generator) for _ in range(tasks)])
        params = params.to(self.device)
        return Trajectory(params, self.net.initial_state(params.shape, device=self.device))

    def update_penalty(self, update: Tensor, params: Tensor) -> Tensor:
        """Per-step term added to the meta-loss: the symmetry regularizer, if any."""
        if self.symmetry_reg is None:
            return update.new_zeros(())
        return symmetry_penalty(update, params, self.optimizee, **self.symmetry_reg)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        xs, ys = self.truncation_minibatches(batch)
        if self.trajectory is None or self.trajectory.step >= self.hparams.n_iters:
            self.trajectory = self.fresh_trajectory(tasks=1, generator=self.init_generator)
            self.trajectories_started += 1
        trajectory, step_losses, penalty = unroll_truncation(
            self.net, self.optimizee, self.trajectory, xs, ys, self.update_penalty
        )
        loss = meta_objective(step_losses, self.hparams.meta_loss) + penalty

        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.hparams.grad_clip is not None:
            self.clip_gradients(optimizer, self.hparams.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()
        self.trajectory = trajectory.detach()

        self.log("meta/loss", loss.detach(), prog_bar=True)
        if self.symmetry_reg is not None:
            self.log("meta/symmetry_penalty", penalty.detach())
        self.log("meta/optimizee_loss", step_losses.detach().mean(), prog_bar=True)
        self.log("meta/trajectory_step", float(trajectory.step))
        self.log("meta/trajectory", float(self.trajectories_started))
        return loss.detach()

    def truncation_minibatches(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The training batch as ``[unroll, tasks, B, ...]`` minibatches (tasks = 1)."""
        x, y = batch
        unroll = self.hparams.unroll
        if x.dim() != 3 or x.shape[0] != unroll:
            got = x.shape[0] if x.dim() == 3 else 1
            raise ConfigError(
                f"a meta-training step needs `model.unroll` = {unroll} minibatches, the training "
                f"batch holds {got}: set `data.batches_per_step` to {unroll}."
            )
        return x.unsqueeze(1), y.unsqueeze(1)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        budget = self.hparams.trajectories
        truncations_per_trajectory = self.hparams.n_iters // self.hparams.unroll
        if budget is not None and self.global_step >= budget * truncations_per_trajectory:
            self.trainer.should_stop = True

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=0.01)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["l2o"] = checkpoint_entry(self.net)

    # ------------------------------------------------------------------ evaluation
    def on_validation_epoch_start(self) -> None:
        self.evaluate_trajectories("val", self.val_n_iters)

    def on_test_epoch_start(self) -> None:
        self.evaluate_trajectories("test", self.test_n_iters)

    def evaluate_trajectories(self, stage: str, n_iters: int) -> None:
        """Train ``eval_tasks`` fresh optimizees with the current LSTM on the training split;
        log their loss curve and summary, keep the final parameters for the test split."""
        x, y, batch_size = self.training_split()
        tasks, seed = self.eval_tasks, self.eval_seed
        start = self.fresh_trajectory(tasks, torch.Generator().manual_seed(seed))
        minibatches = (  # [tasks, B, ...]: one minibatch per optimizee and step
            (xb.view(tasks, batch_size, -1).to(self.device), yb.view(tasks, batch_size).to(self.device))
            for xb, yb in EndlessMinibatches(x, y, batch_size, seed, batches_per_item=tasks)
        )
        losses, self.eval_final_params = run_trajectories(
            self.net, self.optimizee, start, iter(minibatches), n_iters
        )
        curve = losses.mean(1).tolist()
        tag = f"val/loss_curve/meta_step_{self.global_step}" if stage == "val" else "test/loss_curve"
        for logger in self.loggers:
            for step, value in enumerate(curve):
                logger.log_metrics({tag: value}, step=step)
        self.log(f"{stage}/final_loss", curve[-1])
        self.log(f"{stage}/mean_loss", sum(curve) / len(curve), prog_bar=True)

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


def validate_meta_args(
    unroll: int, n_iters: int, meta_loss: str, trajectories: int | None, eval_tasks: int
) -> None:
    """Raise :class:`ConfigError` naming the setting when a meta-training setting is invalid."""
    if unroll <= 0 or n_iters <= 0 or n_iters % unroll:
        raise ConfigError(
            f"`model.n_iters` ({n_iters}) must be a positive multiple of `model.unroll` ({unroll}), "
            "e.g. n_iters 200 with unroll 20 (the paper)."
        )
    if meta_loss not in ("sum", "log_sum"):
        raise ConfigError(f"unknown `model.meta_loss` {meta_loss!r}; allowed: sum, log_sum.")
    if trajectories is not None and trajectories <= 0:
        raise ConfigError(f"`model.trajectories` must be positive or null, got {trajectories}.")
    if eval_tasks <= 0:
        raise ConfigError(f"`model.eval_tasks` must be positive, got {eval_tasks}.")


def validate_symmetry_reg(symmetry_reg: SymmetryReg | None, optimizee: MLP) -> dict | None:
    """``{beta, kinds}`` with defaults filled in, ``None`` when it adds nothing; a
    :class:`ConfigError` naming ``model.symmetry_reg`` for a negative ``beta`` or a kind the
    optimizee does not have."""
    if not symmetry_reg or not symmetry_reg.get("beta"):
        return None
    beta, kinds = float(symmetry_reg["beta"]), list(symmetry_reg.get("kinds", ["rescale"]))
    available = sorted({group.kind for group in optimizee.symmetry_groups()})
    if beta < 0 or not kinds or not set(kinds) <= set(available):
        raise ConfigError(
            f"invalid `model.symmetry_reg` (beta={beta}, kinds={kinds}): beta must be >= 0 and "
            f"kinds a non-empty subset of this optimizee's symmetries {available}."
        )
    return {"beta": beta, "kinds": kinds}
