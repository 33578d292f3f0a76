"""The ``l2o`` command: a LightningCLI whose model is chosen by class path."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

from l2o_lightning.cli_errors import (
    SUBCOMMANDS,
    _config_error_in,
    _did_you_mean,
    _innermost_reason,
    _missing_config_hint,
    _optimizer_error,
    _unknown_setting,
    _with_config_paths,
)
from l2o_lightning.cli_runs import (
    _check_checkpoint,
    _check_log_dir,
    _fill_run_name,
    _found,
    _last_checkpoint,
    _log_evaluation_in_its_run,
)
from l2o_lightning.data import MNISTDataModule
from l2o_lightning.errors import ConfigError, DivergenceError
from l2o_lightning.meta import MetaTrainModule
from l2o_lightning.optim import L2O, LionSGD
from l2o_lightning.optimizee_module import OptimizeeModule

CKPT_KEYWORDS = ("last", "best", "hpc")  # resolved by Lightning itself
# Lightning's default logger (lightning_logs/version_<n>), resume-aware: a resumed run adds no duplicate point
DEFAULT_LOGGER = {"class_path": "l2o_lightning.loggers.ResumingTensorBoardLogger",
                  "init_args": {"save_dir": "."}}
# jsonargparse resolves a short class name (`--model OptimizeeModule`, `--model.help
# MetaTrainModule`, `--optimizer.help L2O`) among the subclasses loaded: these are loaded here
PROJECT_CLASSES = {"model": (OptimizeeModule, MetaTrainModule), "optimizer": (L2O, LionSGD)}


class L2OCLI(LightningCLI):
    """``l2o fit|validate|test`` over any LightningModule and the MNIST data module.

    Checkpoints are read with ``weights_only=True`` unless ``--weights_only false`` is given;
    a ``--ckpt_path`` file is checked before anything runs (missing, unreadable, or written by
    another model: one-paragraph error; resuming, ``fit``, also by a run with other settings).
    ``--ckpt_path last`` resumes the newest run of the configured TensorBoard logger that has a
    ``checkpoints/last.ckpt`` and logs into that run's directory (unless
    ``trainer.logger.init_args.version`` is set). ``l2o test`` (``validate``) of a run's
    checkpoint logs inside that run (:func:`_log_evaluation_in_its_run`). A run given a
    checkpoint writes its ``config.yaml`` only once the checkpoint is restored
    (:class:`SaveConfigAfterRestore`).
    """

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            rejected = _config_error_in(err)
            if rejected is not None:  # a settings class (e.g. model.unroll) refused its values
                raise rejected from None
            argv = list(sys.argv[1:] if args is None else args)
            unknown = _unknown_setting(str(err), argv, self._subcommand_parsers) or _unknown_class(str(err))
            if unknown is None:
                raise
            raise ConfigError(unknown) from None
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand or "", None)
        if config is None:
            return
        if config.get("weights_only") is None:
            config["weights_only"] = True
        _fill_run_name(config)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is not None and not str(ckpt_path).strip():
            raise ConfigError(
                "`ckpt_path` is empty (an unset shell variable?): pass a checkpoint file, `last` to resume "
                "the newest run of this config, or leave out `--ckpt_path` to start afresh."
            )
        resuming = subcommand == "fit"
        if ckpt_path == "last":
            ckpt_path = _last_checkpoint(config, point_logger=resuming)
            if not resuming:  # Lightning would look for it in the evaluation's own log folder
                config["ckpt_path"] = str(_found(ckpt_path, config))
        if ckpt_path and ckpt_path not in CKPT_KEYWORDS and "://" not in str(ckpt_path):
            _check_checkpoint(ckpt_path, config, resuming=resuming)
            if not resuming:
                _log_evaluation_in_its_run(config, Path(ckpt_path), subcommand)
        _check_log_dir(config)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:  # a constructor rejected a configured value
            rejected = _config_error_in(err)
            reason = str(rejected) if rejected is not None else _innermost_reason(str(err))
            raise ConfigError(_with_config_paths(reason, self._get(self.config, "model"))) from None

    def after_instantiate_classes(self) -> None:
        # no TensorBoard logger (the configs', one given on the command line, Lightning's default)
        # writes the placeholder `hp_metric = -1`, which measures nothing; Lightning has no public
        # switch once the logger is built
        for logger in self.trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger._default_hp_metric = False
        # the run's hparams.yaml (what loggers record) holds the settings the run used: not
        # LightningCLI's loader entry (checkpoints keep it), and the data root as resolved
        for part in (self.model, self.datamodule):
            getattr(part, "_hparams_initial", {}).pop("_instantiator", None)
        data_dir = getattr(self.datamodule, "data_dir", None)
        if data_dir is not None and "data_dir" in getattr(self.datamodule, "_hparams_initial", {}):
            self.datamodule._hparams_initial["data_dir"] = str(Path(data_dir).resolve())

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        # Lightning builds the configured optimizer here: name the setting its error is about
        try:
            super()._add_configure_optimizers_method_to_model(subcommand)
        except ConfigError:
            raise
        except (ValueError, AssertionError) as err:
            optimizer = self._get(self.config, "optimizer")
            raise ConfigError(_optimizer_error(err, optimizer)) from None


class SaveConfigAfterRestore(SaveConfigCallback):
    """Lightning's ``config.yaml`` of the run, except that a run given a ``ckpt_path`` writes it
    only once the checkpoint is restored, as its stage starts: a resume that fails leaves the
    saved config of the run it tried to resume as it was."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.config.get("ckpt_path") is None:
            super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().setup(trainer, pl_module, "fit")  # a no-op once saved

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().setup(trainer, pl_module, "validate")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().setup(trainer, pl_module, "test")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().setup(trainer, pl_module, "predict")


def _short_class_names(section: str) -> list[str]:
    """The classes a ``section`` (``model``, ``optimizer``) accepts by short name: the project's,
    and for ``optimizer`` torch.optim's too."""
    names = [cls.__name__ for cls in PROJECT_CLASSES.get(section, ())]
    if section == "optimizer":
        names += [name for name, obj in vars(torch.optim).items() if isinstance(obj, type)
                  and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer]
    return names


def _unknown_class(message: str) -> str | None:
    """One paragraph for a ``--<section>.help NAME`` whose class jsonargparse cannot find: the
    closest class name and the ones accepted without their import path; ``None`` when
    ``message`` reports something else."""
    match = re.search(r"--(\w+)\.help: Expected a dot import path string: (\S+)", message)
    if match is None:
        return None
    section, name = match.groups()
    known = _short_class_names(section)
    return (f"`--{section}.help {name}`: no {section} class is named {name}{_did_you_mean(name, known)} "
            f"Classes known by their name: {', '.join(known) or 'none'}; any other by its import path "
            "(`package.module.Class`).")


def _not_an_advert(record: logging.LogRecord) -> bool:
    """A logging filter: False for Lightning's tip advertising its cloud logger."""
    return "litlogger" not in record.getMessage()


def quiet_third_party() -> None:
    """Silence what the libraries print that is not the user's business: deprecations inside
    Lightning and torch (Lightning's use of jsonargparse and of torch's pytree) and Lightning's
    advert for its cloud logger. Warnings about the user's settings stay."""
    # the modules' own configure_optimizers only explains how to pass --optimizer
    warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning\.pytorch\.cli")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_an_advert)


def main(args: list[str] | None = None) -> None:
    """Run the CLI; an invalid setting ends with one paragraph on stderr and exit code 2,
    a diverging run with exit code 3."""
    quiet_third_party()
    # errors are raised, not printed and exited; a key is never matched by a prefix of it
    no_exit = {"exit_on_error": False, "allow_abbrev": False}
    try:
        L2OCLI(
            L.LightningModule,
            MNISTDataModule,
            subclass_mode_model=True,
            save_config_callback=SaveConfigAfterRestore,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"logger": DEFAULT_LOGGER},
            parser_kwargs={**no_exit, **{name: no_exit for name in SUBCOMMANDS}},
            args=args,
        )
    except ArgumentError as err:
        prog = "l2o " + (sys.argv[1] if args is None and len(sys.argv) > 1 else "<subcommand>")
        hint = _missing_config_hint(str(err))
        print(f"l2o: error: {err}{hint}\n(run `{prog} --help` for the accepted settings)", file=sys.stderr)
        sys.exit(2)
    except (ConfigError, MisconfigurationException) as err:  # Lightning's own bad-setting error
        print(f"l2o: error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
    except DivergenceError as err:
        print(f"l2o: error: {err}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
