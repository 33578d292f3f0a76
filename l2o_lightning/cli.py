"""The ``l2o`` command: a LightningCLI whose model is chosen by class path."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import re
import sys
import typing
import warnings
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
import yaml
from jsonargparse import ArgumentError
from jsonargparse.typing import import_object
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

from l2o_lightning import REPO_ROOT
from l2o_lightning.cli_runs import (
    _check_checkpoint,
    _check_log_dir,
    _fill_run_name,
    _found,
    _last_checkpoint,
    _log_evaluation_in_its_run,
    _plain,
)
from l2o_lightning.data import MNISTDataModule
from l2o_lightning.errors import ConfigError, DivergenceError
from l2o_lightning.meta import MetaTrainModule
from l2o_lightning.optim import L2O, LionSGD
from l2o_lightning.optimizee_module import OptimizeeModule

SUBCOMMANDS = ("fit", "validate", "test", "predict")
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


def _unknown_setting(message: str, argv: list[str], subcommand_parsers: dict) -> str | None:
    """One paragraph for jsonargparse's report of an unknown key: the key, where it was given
    (the command line, a ``-c`` file), the closest valid key and the class's settings; ``None``
    when ``message`` reports something else."""
    subcommand = next((token for token in argv if token in SUBCOMMANDS), None)
    nested = _unknown_class_setting(message)
    if nested is not None:
        key = nested.path[-1]
        inner = _inner_setting(nested.owner, key) if nested.group is None else None
        moved = f"; it is `{'.'.join([*nested.path[:-1], inner])}`." if inner else None
        hint = moved or _did_you_mean(key, nested.valid)
        owner = nested.owner if nested.group is None else f"{nested.owner}'s `{nested.group}`"
        return (f"`{'.'.join(nested.path)}`{_given_in(argv, nested.path)} is not a setting of {owner}"
                f"{hint} Its settings: {', '.join(nested.valid) or 'none'}.")
    match = re.search(r"does not accept option '([\w.]+)'|unrecognized arguments: --([\w.]+)", message)
    if match is None or subcommand not in subcommand_parsers:
        return None
    key = match.group(1) or match.group(2)
    valid = [action.dest for action in subcommand_parsers[subcommand]._actions if action.dest != "help"]
    return (f"`{key}`{_given_in(argv, key.split('.'))} is not a setting of `l2o {subcommand}`"
            f"{_did_you_mean(key, valid)} Run `l2o {subcommand} --help` for the accepted settings.")


class UnknownSetting(NamedTuple):
    """An unknown key of a class-path setting: its full key path, the class (import path) whose
    settings, or whose settings group ``group`` (e.g. MetaTrainModule's ``unroll``), lack it, and
    the settings they have."""

    path: list[str]
    owner: str
    group: str | None
    valid: list[str]


def _unknown_class_setting(message: str) -> UnknownSetting | None:
    """From jsonargparse's report of an unknown key of a class-path setting (the model, the
    optimizer, or an object inside them such as ``model.optimizee``, or a settings group such as
    ``model.unroll``) the :class:`UnknownSetting`; ``None`` when ``message`` reports something
    else."""
    keys = re.findall(r'Parser key "(\w+)"', message)
    classes = re.findall(r"Problem with given class_path '([\w.]+)'", message)
    end = re.search(r"Group '(\w+)' does not accept option '(\w+)'|Option '(\w+)' is not accepted"
                    r"|unrecognized arguments: --([\w.]+)=", message)
    if not keys or len(classes) != len(keys) or end is None:
        return None
    group, key = (end.group(1), end.group(2)) if end.group(1) else (None, end.group(3))
    if end.group(4):
        *groups, key = end.group(4).split(".")
        group = groups[0] if groups else None
    path = [part for pair in zip(keys, ["init_args"] * len(keys), strict=True) for part in pair]
    # Lightning passes an optimizer the model's parameters, and a scheduler its optimizer
    linked = {"optimizer": ("params",), "lr_scheduler": ("optimizer",)}.get(keys[0], ())
    linked = linked if len(keys) == 1 else ()
    if group is None:
        return UnknownSetting([*path, key], classes[-1], None, _init_settings(classes[-1], skip=linked))
    default = inspect.signature(import_object(classes[-1])).parameters[group].default
    is_group = dataclasses.is_dataclass(default)
    fields = [field.name for field in dataclasses.fields(default)] if is_group else []
    return UnknownSetting([*path, group, key], classes[-1], group, fields)


def _inner_setting(class_path: str, key: str) -> str | None:
    """Where ``key`` lives one level down in a class's settings: ``<arg>.<key>`` for a settings
    group (dataclass) argument, ``<arg>.init_args.<key>`` for an object argument (e.g.
    MetaTrainModule's ``optimizee.init_args.activation``); ``None`` when nowhere."""
    try:
        cls = import_object(class_path)
        hints = typing.get_type_hints(cls.__init__)
    except (ImportError, AttributeError, NameError, TypeError):
        return None
    for arg, parameter in inspect.signature(cls).parameters.items():
        if dataclasses.is_dataclass(parameter.default):
            if key in {field.name for field in dataclasses.fields(parameter.default)}:
                return f"{arg}.{key}"
            continue
        for inner in typing.get_args(hints.get(arg)) or (hints.get(arg),):
            if isinstance(inner, type) and issubclass(inner, torch.nn.Module) and key in _init_settings(
                f"{inner.__module__}.{inner.__qualname__}", skip=()
            ):
                return f"{arg}.init_args.{key}"
    return None


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


def _init_settings(class_path: str, skip: tuple[str, ...]) -> list[str]:
    """The keyword settings of a class's constructor, ``skip`` left out."""
    parameters = inspect.signature(import_object(class_path)).parameters.values()
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in keyword and p.name not in skip]


def _did_you_mean(key: str, valid: list[str]) -> str:
    """The end of the sentence naming an unknown ``key``: the closest ``valid`` key, if any is close."""
    close = difflib.get_close_matches(key, valid, n=1)
    return f"; did you mean `{close[0]}`?" if close else "."


def _given_in(argv: list[str], path: list[str]) -> str:
    """Where the setting at key ``path`` was given: " (on the command line)", " (in FILE)" for
    each ``-c`` file holding it ('' when neither does). ``init_args`` may be left out."""
    flags = {"--" + ".".join(path), "--" + ".".join(part for part in path if part != "init_args")}
    places = ["on the command line"] if any(token.split("=", 1)[0] in flags for token in argv) else []
    files = [argv[i + 1] for i, token in enumerate(argv[:-1]) if token in ("-c", "--config")]
    files += [token.split("=", 1)[1] for token in argv if token.startswith("--config=")]
    for file in files:
        try:
            content = yaml.safe_load(Path(file).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if _holds(content, path):
            places.append(f"in {file}")
    return f" ({', '.join(places)})" if places else ""


def _holds(tree, path: list[str]) -> bool:
    """Whether the nested dict ``tree`` has the key ``path`` (an ``init_args`` level may be left out)."""
    if not path:
        return True
    if not isinstance(tree, dict):
        return False
    head, rest = path[0], path[1:]
    return (head in tree and _holds(tree[head], rest)) or (head == "init_args" and _holds(tree, rest))


# how torch's optimizers name a setting in their errors, where that is not its own name
_OPTIMIZER_PHRASES = {"lr": "learning rate", "eps": "epsilon", "betas": "beta"}


def _optimizer_error(err: Exception, optimizer) -> str:
    """One paragraph for an optimizer constructor's refusal: its reason and the setting(s) it is
    about (all its settings when the reason names none)."""
    reason = " ".join(str(err).split()) or type(err).__name__
    class_path = optimizer.get("class_path", "?") if hasattr(optimizer, "get") else "?"
    init_args = _plain(optimizer.get("init_args")) if hasattr(optimizer, "get") else None
    init_args = init_args or {}
    named = [name for name in init_args if re.search(rf"\b{re.escape(name)}\b", reason)
             or (phrase := _OPTIMIZER_PHRASES.get(name)) and phrase in reason]
    shown = ", ".join(f"`optimizer.{name}` = {init_args[name]!r}" for name in named or init_args)
    fix = f"`--optimizer.{named[0]} VALUE`" if len(named) == 1 else "`--optimizer.<setting> VALUE`"
    return (f"the optimizer {class_path} refuses its settings ({reason}): {shown or 'no settings given'}; "
            f"fix it with {fix} or in the optimizer's config file.")


def _config_error_in(err: BaseException) -> ConfigError | None:
    """The :class:`ConfigError` that ``err`` was raised from, if any: jsonargparse builds the
    dataclass settings groups while parsing and reports a refusal as a type mismatch."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ConfigError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _with_config_paths(message: str, model) -> str:
    """``message`` with each "`<setting>` of <Class>" a network raised replaced by the setting's
    place in the model's config: ``model.<arg>.<setting>`` when the model is given the object as
    its ``<arg>`` (e.g. ``model.optimizee.activation`` of a MetaTrainModule), ``model.<setting>``
    when it takes the setting itself (an OptimizeeModule builds its MLP).

    >>> model = {"init_args": {"optimizee": {"class_path": "l2o_lightning.optimizees.MLP"}}}
    >>> _with_config_paths("`hidden` of MLP: give [20]", model)
    '`model.optimizee.hidden`: give [20]'
    >>> _with_config_paths("`hidden` of MLP: give [20]", {"init_args": {"hidden": [0]}})
    '`model.hidden`: give [20]'
    """
    settings = _plain(model.get("init_args") if hasattr(model, "get") else None) or {}

    def config_path(match: re.Match) -> str:
        setting, owner = match.groups()
        for arg, value in settings.items():
            if isinstance(value, dict) and str(value.get("class_path", "")).rsplit(".", 1)[-1] == owner:
                return f"`model.{arg}.{setting}`"
        return f"`model.{setting}`" if setting in settings else match.group(0)

    return re.sub(r"`(\w+)` of (\w+)", config_path, message)


def _innermost_reason(message: str) -> str:
    """jsonargparse wraps a constructor's error in a union report; keep the constructor's
    own sentence (the first ``- `` bullet) when there is one."""
    bullets = [line.strip()[2:] for line in message.splitlines() if line.strip().startswith("- ")]
    return bullets[0] if bullets else message


def _missing_config_hint(message: str) -> str:
    """Where a missing ``-c configs/...`` file lies: the shipped configs are named relative
    to the repository root ('' when the message is about something else)."""
    match = re.search(r"File does not exist: '(?:.*/)?(configs/[^']+)'", message)
    if match is None or not (REPO_ROOT / match.group(1)).is_file():
        return ""
    return f"\nthe shipped configs lie in {REPO_ROOT}: run l2o there, or pass {REPO_ROOT / match.group(1)}"


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
