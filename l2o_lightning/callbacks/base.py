"""Shared glue of the probes: when they run, where they log, what they read.

A probe reads the optimizee as ``pl_module.optimizee`` (an :class:`~l2o_lightning.optimizees.MLP`)
and the optimizer as ``trainer.optimizers[0]``, logs to the run's TensorBoard logger at
x = the optimizee step being taken (``trainer.global_step`` before it), and never perturbs
training: it only reads detached copies and draws no random numbers. It fires at the 1-based
optimizee steps 1 and every multiple of ``every_n_steps`` (:func:`~l2o_lightning.steps.probe_due`,
the convention of :mod:`l2o_lightning.steps`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer

from l2o_lightning.dynamics.histograms import histogram
from l2o_lightning.dynamics.layout import flat_grad, optimizer_index
from l2o_lightning.dynamics.noise import REFERENCES, Noise, Reference, pool_noise
from l2o_lightning.dynamics.per_sample import UnitGroup, split_units
from l2o_lightning.dynamics.update_rules import updates
from l2o_lightning.errors import ConfigError
from l2o_lightning.optimizee_steps import OptimizeeStep, RowUpdates
from l2o_lightning.optimizees import MLP
from l2o_lightning.steps import probe_due


def optimizee_of(pl_module: L.LightningModule) -> MLP:
    """The module's optimizee (``pl_module.optimizee``), with a clear error when missing."""
    model = getattr(pl_module, "optimizee", None)
    if not isinstance(model, MLP):
        raise ConfigError(
            f"the probes need a LightningModule with an `optimizee` MLP attribute (e.g. "
            f"l2o_lightning.optimizee_module.OptimizeeModule), got {type(pl_module).__name__}."
        )
    return model


class Probe(L.Callback):
    """Base of the probes: runs at optimizee step 1 and every ``every_n_steps`` (1-based), logs
    to TensorBoard at the step's ``global_step``.

    Args:
        every_n_steps: probe the 1-based optimizee steps 1 and every multiple of this
            (:func:`~l2o_lightning.steps.probe_due`).
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        if every_n_steps <= 0:
            raise ConfigError(
                f"`every_n_steps` of {type(self).__name__} must be positive, got {every_n_steps}."
            )
        self.every_n_steps = every_n_steps
        self._logger: TensorBoardLogger | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._logger = None
        if not trainer.is_global_zero:  # loggers write from process 0 only: probe nothing elsewhere
            return
        self._logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if self._logger is None and stage == "fit":
            loggers = ", ".join(type(lg).__name__ for lg in trainer.loggers) or "none"
            rank_zero_warn(
                f"{type(self).__name__} logs to TensorBoard only (loggers: {loggers}); it is disabled. "
                "Use `--trainer.logger l2o_lightning.loggers.ResumingTensorBoardLogger`."
            )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._logger = None

    def due(self, trainer: L.Trainer) -> bool:
        """Whether the optimizee step about to be taken is probed."""
        return self.due_at(trainer.global_step)

    def due_at(self, step: int) -> bool:
        """Whether the optimizee step logged at ``step`` (its 0-based ``global_step``, or
        meta-training's position) is probed."""
        return self._logger is not None and probe_due(step, self.every_n_steps)

    def log_scalars(self, scalars: Mapping[str, Tensor | float], step: int) -> None:
        self._logger.log_metrics({tag: float(value) for tag, value in scalars.items()}, step=step)

    def log_histogram(self, tag: str, values: Tensor, step: int, bins: int | Tensor) -> None:
        """A histogram of CPU ``values`` with ``bins`` equal-width bins or the given float64
        edges (:func:`~l2o_lightning.dynamics.histograms.histogram`)."""
        self._logger.experiment.add_histogram_raw(tag, **histogram(values, bins)._asdict(), global_step=step)


class AppliedUpdateProbe(Probe):
    """A probe of the update actually applied, ``u = theta_after - theta_before``: records
    ``theta`` and the gradient before ``optimizer.step()`` and observes after the batch; during
    meta-training it observes the optimizee steps the module publishes
    (:class:`~l2o_lightning.optimizee_steps.MetaTrainingStepListener`)."""

    def __init__(self, every_n_steps: int = 10) -> None:
        super().__init__(every_n_steps)
        self._before: tuple[int, Tensor, Tensor] | None = None

    def observe(self, step: int, model: MLP, theta: Tensor, grad: Tensor, update: Tensor) -> None:
        """Log what the probe measures; all flat ``[D]`` in the optimizee's layout."""
        raise NotImplementedError

    @torch.no_grad()
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer
    ) -> None:
        # under manual optimization (meta-training) the optimizer steps the meta-parameters;
        # the module publishes the optimizee's steps (on_meta_training_step)
        if pl_module.automatic_optimization and self.due(trainer):
            model = optimizee_of(pl_module)
            self._before = (trainer.global_step, model.flat_parameters(), flat_grad(model))

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self._before is None:
            return
        (step, theta, grad), self._before = self._before, None
        model = optimizee_of(pl_module)
        self.observe(step, model, theta, grad, model.flat_parameters() - theta)

    @torch.no_grad()
    def on_meta_training_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, step: OptimizeeStep
    ) -> None:
        if self.due_at(step.position):
            self.observe(step.position, optimizee_of(pl_module), step.params, step.grad, step.update)


class NoiseProbe(Probe):
    """A probe of the noise across a fixed pool of units: their gradients in one batched
    call per unit size and the updates the optimizer would apply to them, from its state
    before the step. Noise probes with the same pool (:attr:`pool_key`) share that
    computation at a step, whatever their ``reference``.

    Args:
        every_n_steps: probe the 1-based optimizee steps 1 and every multiple of this.
        num_units: ``M``, units in the pool, drawn at random without overlap; ``"all"``: the
            whole training split in the order of one pass of a shuffling ``DataLoader`` with
            the training batch size (:func:`l2o_lightning.data.loader_pass`; MNIST, 128: 469
            minibatches, the last of 96), the paper's pool for the tail index (``unit: batch``).
        unit: ``batch`` (a minibatch of the training batch size, as the original study's
            code) or ``sample`` (a single sample).
        seed: seed of the pool, drawn once from ``trainer.datamodule.probe_pool``.
        reference: centre of the update noise (:meth:`Noise.update_ref`): ``mean_update``
            (the paper's), the mean of the units' updates, or ``update_of_mean``, the update of
            the pool's mean gradient. Gradient noise is always centred at the mean gradient.
    """

    # the latest Noise, keyed by (trainer, step, pool_key); emptied at fit start and end
    _shared: ClassVar[dict[tuple, Noise]] = {}

    def __init__(
        self, every_n_steps: int = 10, num_units: int | Literal["all"] = 32,
        unit: Literal["batch", "sample"] = "batch", seed: int = 0, reference: Reference = "mean_update",
    ) -> None:
        super().__init__(every_n_steps)
        name = type(self).__name__
        if num_units != "all" and (not isinstance(num_units, int) or num_units < 2):
            raise ConfigError(
                f"`num_units` of {name} must be an integer of at least 2 or 'all', got {num_units!r}."
            )
        if unit not in ("batch", "sample"):
            raise ConfigError(f"`unit` of {name} must be 'batch' or 'sample', got {unit!r}.")
        if num_units == "all" and unit != "batch":
            raise ConfigError(
                f"`num_units: all` of {name} takes the training loader's minibatches; it needs `unit: batch`."
            )
        if reference not in REFERENCES:
            raise ConfigError(
                f"`reference` of {name} must be one of {', '.join(REFERENCES)}, got {reference!r}."
            )
        self.num_units, self.unit, self.seed, self.reference = num_units, unit, seed, reference
        self._pool: list[UnitGroup] | None = None

    def observe(self, step: int, noise: Noise) -> None:
        """Log what the probe measures."""
        raise NotImplementedError

    @property
    def pool_key(self) -> tuple:
        """What determines the pool, hence the :class:`Noise` at a step (not ``reference``:
        a :class:`Noise` holds both centres)."""
        return self.num_units, self.unit, self.seed

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        NoiseProbe._shared.clear()
        if self._logger is None:
            return
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "probe_pool"):
            raise ConfigError(
                f"{type(self).__name__} draws its pool from `trainer.datamodule.probe_pool`, which "
                f"{type(datamodule).__name__} lacks; use l2o_lightning.data.MNISTDataModule."
            )
        size = datamodule.batch_size if self.unit == "batch" else 1
        x, y = datamodule.probe_pool("all" if self.num_units == "all" else self.num_units * size, self.seed)
        self._pool = split_units(x.to(pl_module.device), y.to(pl_module.device), size)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        NoiseProbe._shared.clear()
        self._pool = None

    @torch.no_grad()
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer
    ) -> None:
        # under manual optimization (meta-training) the optimizer steps the meta-parameters;
        # the module publishes the optimizee's steps (on_meta_training_step)
        if not pl_module.automatic_optimization or not self.due(trainer) or self._pool is None:
            return
        model, optimizer = optimizee_of(pl_module), trainer.optimizers[0]
        index = optimizer_index(optimizer, model)

        def rule(rows: Tensor) -> Tensor:  # optimizee layout -> the optimizer's order
            return updates(optimizer, rows[:, index])

        self.probe(trainer, trainer.global_step, model, model.flat_parameters(), rule)

    @torch.no_grad()
    def on_meta_training_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, step: OptimizeeStep
    ) -> None:
        if self.due_at(step.position) and self._pool is not None:
            self.probe(trainer, step.position, optimizee_of(pl_module), step.params, step.rule)

    def probe(self, trainer: L.Trainer, step: int, model: MLP, theta: Tensor, rule: RowUpdates) -> None:
        """Observe the noise at ``step``, computed once for all noise probes with the same pool."""
        key = (id(trainer), step, *self.pool_key)
        if key not in NoiseProbe._shared:
            NoiseProbe._shared.clear()
            NoiseProbe._shared[key] = self.noise(model, theta, rule)
        self.observe(step, NoiseProbe._shared[key])

    def noise(self, model: MLP, theta: Tensor, rule: RowUpdates) -> Noise:
        """Unit gradients at ``theta`` (``[D]``) and the updates ``rule`` gives them
        (:func:`~l2o_lightning.dynamics.noise.pool_noise` of the probe's pool)."""
        return pool_noise(model, theta, self._pool, rule)
