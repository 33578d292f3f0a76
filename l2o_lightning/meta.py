"""Meta-training of the LSTM optimizer over truncated, unrolled optimizee trajectories
(Andrychowicz et al. 2016, https://arxiv.org/abs/1606.04474).

A trajectory is a fresh optimizee trained for ``unroll.n_iters`` steps by the LSTM; it is cut
into truncations of ``unroll.length`` steps. Within a truncation the optimizee parameters carry
the autograd graph through the LSTM updates; the optimizee gradients are inputs
(detached: no second derivatives, as in the paper). After each truncation the
meta-optimizer steps and parameters and LSTM states are detached (:meth:`Trajectory.detach`,
the one place the graph is cut).

Tasks: every meta-step advances ``unroll.tasks_per_step`` independent trajectories in one batched
LSTM call and averages their meta-losses. Under DDP with ``W`` processes, process ``r`` owns
global tasks ``k * W + r`` (``k < tasks_per_step``) and DDP averages the meta-gradients, so
``W`` processes with ``K`` tasks each compute what one process with ``W * K`` tasks does:
a trajectory's initialisation depends only on ``(seed, task, round)`` (:func:`task_generator`)
and its minibatches are the same ones of the shared stream (``EndlessMinibatches.shard``).

Data: a training step receives ``unroll.minibatches`` (``length * tasks_per_step``)
minibatches from the datamodule (``data.batches_per_step``); the ``t * tasks_per_step + k``-th is
task ``k``'s at step ``t``.
Validation and test: :mod:`l2o_lightning.meta_eval`.

Resuming (``l2o fit ... --ckpt_path last``): checkpoints carry, besides Lightning's state
(meta-optimizer, global step) and the datamodule's stream position, the trajectories
(parameters, LSTM states, step) and the counters of
:class:`~l2o_lightning.meta_progress.MetaProgress`, so a resumed run continues exactly where
the checkpoint was taken. A truncation's metrics are written and flushed before its
checkpoint; the truncations the interrupted run wrote after its last checkpoint are
recomputed, and the resume-aware logger of the shipped configs
(:class:`~l2o_lightning.loggers.ResumingTensorBoardLogger`) does not write them again: the
curves continue without gap or duplicate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict
from functools import partial

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from l2o_lightning.allocator import keep_freed_memory
from l2o_lightning.checkpoints import (
    CHECKPOINT_KEY,
    TRAINING_STATE_KEY,
    checkpoint_entry,
    l2o_entry,
    layout_mismatch,
    pack_training_state,
    training_state,
    unpack_trajectory,
)
from l2o_lightning.errors import ConfigError, DivergenceError
from l2o_lightning.learned import LSTMOptimizerNet, LSTMState
from l2o_lightning.meta_eval import Evaluation, TrajectoryEvaluation
from l2o_lightning.meta_progress import MetaProgress
from l2o_lightning.optimizee_steps import MetaTrainingStepListener, OptimizeeStep, step_listeners
from l2o_lightning.optimizees import MLP
from l2o_lightning.unroll import (
    MetaLossKind,
    SymmetryReg,
    Trajectory,
    Unroll,
    all_finite,
    meta_objective,
    symmetry_penalty,
    task_generator,
    unroll_truncation,
    validate_symmetry_reg,
)

_CKPT_HINT = "pass a checkpoint written by `l2o fit -c configs/meta_train/<optimizee>.yaml`"


class MetaTrainModule(TrajectoryEvaluation, L.LightningModule):
    """Meta-train :class:`~l2o_lightning.learned.LSTMOptimizerNet` on an MLP optimizee.

    One training step is one truncation of ``unroll.tasks_per_step`` trajectories (manual
    optimization). Logs per truncation, averaged over processes: ``meta/loss`` (the
    meta-objective), ``meta/optimizee_loss`` (mean step loss), ``meta/trajectory_step``
    (optimizee step at its end), ``meta/trajectory`` (trajectories started, over all tasks and
    processes) and ``meta/diverged`` (truncations skipped so far); after every
    ``epoch_trajectories`` ended trajectories, ``meta/epoch_loss``: their mean summed
    optimizee loss ``sum_t L_t`` over the ``unroll.n_iters`` steps (the paper keeps the epoch
    with the lowest; a ``ModelCheckpoint`` can monitor it). Each validation (test) trains
    ``evaluation.tasks`` fresh optimizees for ``evaluation.val_n_iters`` (``test_n_iters``)
    steps and logs ``val/final_loss``, ``val/mean_loss`` (the optimizee training loss at the
    last step and averaged over the trajectory, mean over tasks), ``val/final_test_loss``,
    ``val/final_test_acc`` (final optimizees on the MNIST test split), and
    ``val/loss_curve/step_<k>``: the loss at optimizee step ``k`` of
    :data:`~l2o_lightning.meta_eval.VAL_CURVE_STEPS` (1-based, up to ``evaluation.val_n_iters``)
    with the meta-step as x-axis; ``test/...`` likewise, except that the test logs the whole
    curve ``test/loss_curve`` (x: the 0-based optimizee step). With the progress bar on, a bar
    counts the trajectories' optimizee steps. Checkpoints carry an ``"l2o"`` entry that
    :class:`~l2o_lightning.optim.L2O` loads, and the state resuming needs (module docstring).

    A truncation whose optimizee loss or update (or meta-gradient) is not finite on any
    process takes no meta-step: its trajectories are dropped (the next truncation starts a
    new round; the round counts in its epoch with an infinite loss, so ``meta/epoch_loss`` of
    an epoch with a diverged round is ``inf`` and that epoch is never the kept lowest), it is
    counted in ``meta/diverged``, and ``max_diverged_in_a_row`` such
    truncations in a row stop the run with :class:`DivergenceError`.

    Args:
        optimizee: the MLP whose trajectories it meta-trains on (default: the paper's Leaky ReLU
            784-20-10, :class:`~l2o_lightning.optimizees.MLP`'s defaults).
        net: the LSTM optimizer it meta-trains (default: the paper's, 2 x 20 units, p = 10,
            out_mult 0.1, :class:`~l2o_lightning.learned.LSTMOptimizerNet`'s defaults).
        unroll: truncation length, trajectory length and tasks per meta-step
            (:class:`~l2o_lightning.unroll.Unroll`); the training batch must hold
            ``unroll.minibatches`` minibatches.
        evaluation: the validation / test trajectories (:class:`~l2o_lightning.meta_eval.Evaluation`).
        meta_loss: ``sum`` (paper) or ``log_sum`` of the truncation's step losses.
        symmetry_reg: ``{beta, kinds}`` adds :func:`symmetry_penalty` of every update of a
            truncation to its meta-loss (logged as ``meta/symmetry_penalty``); ``None`` or
            ``beta = 0`` trains without it.
        grad_clip: clip the meta-gradient to this global norm; ``None`` does not clip.
        trajectories: meta-training budget in trajectories over all tasks and processes: the
            run stops after ``ceil(trajectories / (tasks_per_step * processes))`` rounds of
            ``n_iters / length`` meta-steps (the trainer's ``max_steps`` unless that is smaller; it
            validates after the last one); ``None`` leaves the length to ``trainer.max_steps``.
        max_diverged_in_a_row: diverged truncations in a row that stop the run.
        epoch_trajectories: ended (completed or diverged) trajectories (over all tasks and processes) per
            ``meta/epoch_loss`` (paper: 20).
        compile: run the LSTM's elementwise work through ``torch.compile``
            (:meth:`LSTMOptimizerNet.compile_kernels`).
    """

    def __init__(
        self,
        optimizee: MLP | None = None,
        net: LSTMOptimizerNet | None = None,
        unroll: Unroll = Unroll(),
        evaluation: Evaluation = Evaluation(),
        meta_loss: MetaLossKind = "sum",
        symmetry_reg: SymmetryReg | None = None,
        grad_clip: float | None = None,
        trajectories: int | None = None,
        max_diverged_in_a_row: int = 5,
        epoch_trajectories: int = 20,
        compile: bool = False,
    ) -> None:
        super().__init__()
        validate_meta_args(
            meta_loss=meta_loss, trajectories=trajectories, max_diverged_in_a_row=max_diverged_in_a_row,
            epoch_trajectories=epoch_trajectories,
        )
        # evaluation settings stay out of the checkpoint's hyperparameters: `l2o test --ckpt_path`
        # restores those over the command line, and these should stay choosable at test time
        self.save_hyperparameters(ignore=["evaluation", "compile"])
        self.automatic_optimization = False
        self.unroll = unroll
        self.optimizee = (optimizee if optimizee is not None else MLP()).requires_grad_(False)
        self.symmetry_reg = validate_symmetry_reg(symmetry_reg, self.optimizee)
        self.net = net if net is not None else LSTMOptimizerNet()
        if compile:
            self.net.compile_kernels()
        # meta-training state, set up in on_fit_start (from the checkpoint when resuming)
        self.progress: MetaProgress | None = None
        self.trajectory: Trajectory | None = None
        self._position = 0  # optimizee step inside the current truncation
        self.task_ids: list[int] = []
        self.step_listeners: list[MetaTrainingStepListener] = []  # shown every optimizee step: the probes
        self.resume_state: dict | None = None
        self.init_evaluation(evaluation)

    # ------------------------------------------------------------------ meta-training
    def on_fit_start(self) -> None:
        keep_freed_memory()  # each truncation frees and reallocates what autograd saved
        world, rank = self.trainer.world_size, self.global_rank
        self.task_ids = [k * world + rank for k in range(self.unroll.tasks_per_step)]
        self.step_listeners = step_listeners(self.trainer)
        self.limit_steps_to_budget()
        state, self.resume_state = self.resume_state, None
        if state is None:
            # seeded like the datamodule: seed_everything fixes the whole meta-training run
            self.progress, self.trajectory = MetaProgress(seed=torch.initial_seed()), None
            return
        self.progress = MetaProgress(**state["progress"])
        self.trajectory = self.restored_trajectory(state["trajectory"])

    def fresh_trajectory(self, tasks: Iterable[int], seed: int, round_: int) -> Trajectory:
        """New optimizee initialisations of ``tasks`` (``MLP.sample_flat`` from
        :func:`task_generator`) and zero LSTM states."""
        params = torch.stack([self.optimizee.sample_flat(task_generator(seed, t, round_)) for t in tasks])
        params = params.to(self.device)
        return Trajectory(params, self.net.initial_state(params.shape, device=self.device))

    def step_hook(self, params: Tensor, grad: Tensor, update: Tensor, state: LSTMState) -> Tensor:
        """At every optimizee step of a truncation: publish the first task's step to the
        :class:`~l2o_lightning.optimizee_steps.MetaTrainingStepListener` callbacks, and return
        the term added to the meta-loss (the symmetry regularizer, if any)."""
        position = (self.progress.batches - 1) * self.unroll.length + self._position
        self._position += 1
        if self.step_listeners:
            first_task = LSTMState(state.h[:, 0], state.c[:, 0]).detach()
            step = OptimizeeStep(
                position, params[0].detach(), grad[0].detach(), update[0].detach(),
                rule=partial(self.net.updates_from_one_state, state=first_task),
            )
            for listener in self.step_listeners:
                listener.on_meta_training_step(self.trainer, self, step)
        if self.symmetry_reg is None:
            return update.new_zeros(())
        return symmetry_penalty(update, params, self.optimizee, **self.symmetry_reg)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        xs, ys = self.truncation_minibatches(batch)
        self.progress.batches += 1
        if self.trajectory is None or self.trajectory.step >= self.unroll.n_iters:
            self.trajectory = self.fresh_trajectory(self.task_ids, self.progress.seed, self.progress.rounds)
            self.progress.rounds += 1
        self._position = 0
        trajectory, step_losses, penalty = unroll_truncation(
            self.net, self.optimizee, self.trajectory, xs, ys, self.step_hook
        )
        loss = meta_objective(step_losses, self.hparams.meta_loss) + penalty
        metrics = {"meta/loss": loss.detach(), "meta/optimizee_loss": step_losses.detach().mean()}
        if self.symmetry_reg is not None:
            metrics["meta/symmetry_penalty"] = penalty.detach()
        # decided alike on every process: DDP needs all of them to skip or all to step
        if self.trainer.strategy.reduce_boolean_decision(not all_finite(loss, trajectory.params), all=False):
            return self.skip_diverged(metrics, trajectory.step)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)  # under DDP this averages the meta-gradients over processes
        if not all_finite(*(p.grad for p in self.net.parameters() if p.grad is not None)):
            return self.skip_diverged(metrics, trajectory.step)
        if self.hparams.grad_clip is not None:
            self.clip_gradients(optimizer, self.hparams.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()
        self.trajectory = trajectory.detach()
        self.progress.diverged_in_a_row = 0
        ended = trajectory.step >= self.unroll.n_iters
        epoch = self.progress.count_trajectory_loss(
            step_losses, ended, self.tasks_total, self.hparams.epoch_trajectories
        )
        self.log_truncation({**metrics, **epoch}, trajectory.step)
        return loss.detach()

    @property
    def tasks_total(self) -> int:
        """Trajectories per round, over all tasks and processes."""
        return self.unroll.tasks_per_step * self.trainer.world_size

    def skip_diverged(self, metrics: dict[str, Tensor], trajectory_step: int) -> None:
        """Count a diverged truncation (logging its non-finite metrics as they are) and drop its
        trajectories (no meta-step was taken); raise :class:`DivergenceError` after
        ``max_diverged_in_a_row`` in a row."""
        progress, limit = self.progress, self.hparams.max_diverged_in_a_row
        epoch = progress.count_diverged(self.tasks_total, self.hparams.epoch_trajectories)
        self.trajectory = None
        self.log_truncation({**metrics, **epoch}, trajectory_step)
        if progress.diverged_in_a_row >= limit:
            meta_optimizer = type(self.optimizers().optimizer).__name__
            raise DivergenceError(
                f"meta-training diverged: the optimizee loss or the learned optimizer's (L2O) update was "
                f"non-finite in {limit} truncations in a row (`model.max_diverged_in_a_row`), the last at "
                f"meta-step {self.global_step} (optimizee step {trajectory_step}, meta-optimizer "
                f"{meta_optimizer}); they took no meta-step, so the L2O weights stay finite. Lower "
                "`model.net.out_mult` or the meta-optimizer's `optimizer.lr`, clip with `model.grad_clip`, "
                "or allow longer streaks; logs and checkpoints written so far are kept."
            )

    def log_truncation(self, metrics: dict[str, Tensor], trajectory_step: int) -> None:
        """Log a truncation's metrics and the run's counters, averaged over processes.

        They go to the loggers directly (and are flushed), not through ``self.log``: so they are
        on disk before any checkpoint of this truncation, and a resumed run's logger can leave
        out the truncations its interrupted run already wrote (``self.log`` feeds the progress
        bar and callbacks)."""
        metrics = {
            **metrics,
            "meta/trajectory_step": float(trajectory_step),
            "meta/trajectory": float(self.progress.rounds * self.tasks_total),
            "meta/diverged": float(self.progress.diverged),
        }
        values = torch.tensor([float(v) for v in metrics.values()], device=self.device)
        values = self.trainer.strategy.reduce(values, reduce_op="mean").tolist()
        averaged = dict(zip(metrics, values, strict=True))
        self.progress.last_epoch_loss = averaged.get("meta/epoch_loss", self.progress.last_epoch_loss)
        for name, value in averaged.items():
            self.log(name, value, prog_bar=name in ("meta/loss", "meta/optimizee_loss"), logger=False)
        if self.progress.last_epoch_loss is not None:
            self.log("meta/epoch_loss", self.progress.last_epoch_loss, logger=False)
        for logger in self.loggers:
            logger.log_metrics(averaged, step=self.progress.batches - 1)
            logger.save()

    def truncation_minibatches(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The training batch as ``[unroll, tasks, B, ...]`` minibatches: task ``k``'s at step
        ``t`` is the batch's ``t * tasks + k``-th."""
        x, y = batch
        if x.dim() == 2:  # batches_per_step = 1 delivers a plain minibatch
            x, y = x[None], y[None]
        unroll = self.unroll
        if x.dim() != 3 or x.shape[0] != unroll.minibatches:
            raise ConfigError(
                f"a meta-training step takes {unroll.minibatches_phrase()}, the training batch holds "
                f"{x.shape[0]} (`data.batches_per_step`): leave `data.batches_per_step` unset (it follows "
                f"the model) or set it to {unroll.minibatches}."
            )
        shape = (unroll.length, unroll.tasks_per_step)
        return x.view(*shape, *x.shape[1:]), y.view(*shape, *y.shape[1:])

    def limit_steps_to_budget(self) -> None:
        """Make ``trajectories`` the trainer's ``max_steps`` (or a smaller ``trainer.max_steps``):
        the progress bar shows the total, and a resumed run that is done takes no step."""
        budget = self.hparams.trajectories
        if budget is None:
            return
        rounds = math.ceil(budget / self.tasks_total)
        steps = rounds * self.unroll.truncations
        loop = self.trainer.fit_loop.epoch_loop
        loop.max_steps = steps if loop.max_steps < 0 else min(loop.max_steps, steps)

    def on_train_start(self) -> None:
        # Lightning gives the bar its total (max_steps - global_step, counted from the epoch's first
        # batch) at an epoch's start, which a run resumed mid-epoch skips: meta-training has one
        # endless epoch, so its bar counts the epoch's batches towards max_steps
        bar = self.trainer.progress_bar_callback
        if isinstance(bar, TQDMProgressBar) and self.trainer.max_steps > 0:
            bar.train_progress_bar.reset(total=self.trainer.max_steps)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if 0 < self.trainer.max_steps <= self.global_step:
            self.trainer.should_stop = True  # stopping this way validates at the end, whatever the interval

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=0.01)

    # ------------------------------------------------------------------ checkpoints and resuming
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = checkpoint_entry(self.net)
        if self.progress is not None:
            world = self.trainer.world_size
            checkpoint[TRAINING_STATE_KEY] = pack_training_state(
                asdict(self.progress), self.trajectory, world, self.unroll.tasks_per_step,
                gather=lambda tensor: tensor[None] if world == 1 else self.all_gather(tensor),
            )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        where = "the checkpoint given as `ckpt_path`"
        l2o_entry(checkpoint, where, _CKPT_HINT)
        self.resume_state = training_state(checkpoint, where)

    def restored_trajectory(self, saved: dict | None) -> Trajectory | None:
        """This process's trajectories from a checkpoint; ``None`` (a new round starts) when the
        checkpoint has none or was written with other ``tasks_per_step`` or process counts."""
        if saved is None:
            return None
        mismatch = layout_mismatch(saved, self.trainer.world_size, self.unroll.tasks_per_step)
        if mismatch is not None:
            rank_zero_warn(mismatch)
            return None
        return Trajectory(*unpack_trajectory(saved, self.global_rank, self.device))


def validate_meta_args(**settings: int | str | None) -> None:
    """Raise :class:`ConfigError` naming the setting when a meta-training setting is invalid
    (keyword arguments: the ``MetaTrainModule`` settings of the same names)."""
    if settings["meta_loss"] not in ("sum", "log_sum"):
        raise ConfigError(f"unknown `model.meta_loss` {settings['meta_loss']!r}; allowed: sum, log_sum.")
    if settings["trajectories"] is not None and settings["trajectories"] <= 0:
        raise ConfigError(f"`model.trajectories` must be positive or null, got {settings['trajectories']}.")
    for name in ("max_diverged_in_a_row", "epoch_trajectories"):
        if settings[name] <= 0:
            raise ConfigError(f"`model.{name}` must be positive, got {settings[name]}.")
