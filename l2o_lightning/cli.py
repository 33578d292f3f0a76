"""The ``l2o`` command: a LightningCLI whose model is chosen by class path."""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import re
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml
from jsonargparse import ArgumentError, Namespace
from jsonargparse.typing import import_object
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

from l2o_lightning import REPO_ROOT
from l2o_lightning.checkpoints import read_checkpoint
from l2o_lightning.data import MNISTDataModule
from l2o_lightning.errors import ConfigError, DivergenceError
from l2o_lightning.meta import MetaTrainModule
from l2o_lightning.optim import L2O, LionSGD
from l2o_lightning.optimizee_module import OptimizeeModule

SUBCOMMANDS = ("fit", "validate", "test", "predict")
CKPT_KEYWORDS = ("last", "best", "hpc")  # resolved by Lightning itself
# data settings a resumed run may change: where the files lie, how the test split is batched, and
# batches_per_step, which follows the model's settings (the data module checks a value given)
DATA_FREE_ON_RESUME = ("data_dir", "download", "eval_batch_size", "batches_per_step")
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
            raise ConfigError(_innermost_reason(str(err))) from None

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


def _check_checkpoint(ckpt_path: str | Path, config, resuming: bool) -> None:
    """A :class:`ConfigError` unless ``ckpt_path`` reads with ``weights_only=True`` and was
    written by the configured model class; ``resuming``: also by a run whose saved model and data
    settings are the configured ones (except :data:`DATA_FREE_ON_RESUME`)."""
    where = f"checkpoint '{ckpt_path}' (setting `ckpt_path`)"
    hint = "pass a checkpoint written by an `l2o fit` run with this config, or `--ckpt_path last`"
    content = read_checkpoint(ckpt_path, where, hint)
    hparams = content.get("hyper_parameters")
    written_by = hparams.get("_class_path") if isinstance(hparams, dict) else None
    model = config.get("model")
    configured = model.get("class_path") if hasattr(model, "get") else None
    if written_by and configured and written_by != configured:
        raise ConfigError(f"{where} was written by {written_by}, but the model is {configured}; {hint}.")
    differ = _differing_settings(content, config) if resuming else []
    if differ:
        run = Path(ckpt_path).expanduser().parent.parent
        resume = "`l2o fit` with the config it was trained with"
        if (run / "config.yaml").is_file():
            resume = (f"`l2o fit -c {run / 'config.yaml'} --ckpt_path {ckpt_path} "
                      f"--trainer.logger.init_args.version {run.name}`")
        raise ConfigError(
            f"{where} was written by a run with other settings than this config: {'; '.join(differ)}. "
            "Resuming would continue that run under settings it was not trained with. To resume it as it "
            f"was, run {resume}; to train with these settings, start a new run (leave out `--ckpt_path`)."
        )


def _plain(value):
    """A config value as plain data (jsonargparse namespaces as dicts, tuples as lists), to
    compare with the one a checkpoint saved."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _differing_settings(content: dict, config) -> list[str]:
    """The model and data settings whose configured value is not the one the checkpoint's run
    saved (its ``hyper_parameters`` and ``datamodule_hyper_parameters``), each as a phrase."""
    model = config.get("model")
    model_args = model.get("init_args") if hasattr(model, "get") else None
    sections = [
        ("model", content.get("hyper_parameters"), model_args, ()),
        ("data", content.get("datamodule_hyper_parameters"), config.get("data"), DATA_FREE_ON_RESUME),
    ]
    differ = []
    for section, saved, configured, free in sections:
        configured = _plain(configured) or {}
        for key, value in (saved if isinstance(saved, dict) else {}).items():
            if key.startswith("_") or key in free or _plain(value) == configured.get(key):
                continue
            here = configured.get(key)
            differ.append(f"`{section}.{key}` is {here!r} here, {_plain(value)!r} in the checkpoint")
    return differ


def _check_log_dir(config) -> None:
    """A :class:`ConfigError` unless the logger's folder (``save_dir``/``name``; without one,
    ``trainer.default_root_dir``) exists as a writable folder or can be created as one."""
    trainer = config.get("trainer") or {}
    logger = trainer.get("logger")
    init_args = logger.get("init_args") if hasattr(logger, "get") else None
    save_dir = init_args.get("save_dir") if hasattr(init_args, "get") else None
    if save_dir is not None:
        setting, folder = "trainer.logger.init_args.save_dir", Path(save_dir)
        if isinstance(init_args.get("name"), str):
            folder = folder / init_args.get("name")
    else:
        setting, folder = "trainer.default_root_dir", Path(trainer.get("default_root_dir") or ".")
    folder = folder.expanduser().absolute()
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        problem = f"'{existing}' is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"'{existing}' is not writable (no permission, or a read-only filesystem)"
    else:
        return
    raise ConfigError(
        f"the run cannot write its logs and checkpoints to '{folder}' (setting `{setting}`): {problem}; "
        f"set `--{setting}` to a folder you can write."
    )


def optimizee_name(hidden: list[int], activation: str, batchnorm: bool) -> str:
    """The study's name of an MLP optimizee: the activation, ``bn_`` before it with BatchNorm,
    the hidden sizes after it unless they are the paper's ``[20]``.

    >>> optimizee_name([20], "leaky_relu", False), optimizee_name([20], "relu", True)
    ('leaky_relu', 'bn_relu')
    >>> optimizee_name([100, 100], "sigmoid", False)
    'sigmoid_100_100'
    """
    name = f"bn_{activation}" if batchnorm else activation
    return name if list(hidden) == [20] else "_".join([name, *map(str, hidden)])


def _fill_run_name(config) -> None:
    """Fill the placeholders of a TensorBoard logger's ``name``: ``{optimizee}``
    (:func:`optimizee_name` of the model's settings), ``{optimizer}`` (the optimizer's class
    name, lower case) and ``{config}`` (the config the run starts from, the first ``-c`` file, as
    ``<folder>/<stem>``: files given after it, e.g. probes or overrides, do not rename the run)."""
    logger = config.get("trainer", {}).get("logger")
    init_args = logger.get("init_args") if hasattr(logger, "get") else None
    name = init_args.get("name") if hasattr(init_args, "get") else None
    if not isinstance(name, str) or "{" not in name:
        return
    model = config.get("model", {}).get("init_args", {})
    optimizer = config.get("optimizer") or {}
    files = [Path(str(path)) for path in config.get("config") or []]
    fields = {
        "optimizee": optimizee_name(model.get("hidden", [20]), model.get("activation", "leaky_relu"),
                                    model.get("batchnorm", False)),
        "optimizer": str(optimizer.get("class_path", "none")).rsplit(".", 1)[-1].lower(),
        "config": f"{files[0].parent.name}/{files[0].stem}" if files else "none",
    }
    try:
        init_args["name"] = name.format(**fields)
    except (KeyError, IndexError, ValueError):
        raise ConfigError(
            f"`trainer.logger.init_args.name` {name!r} has a placeholder other than "
            "{optimizee}, {optimizer}, {config}; use those, or a name without braces."
        ) from None


def _tensorboard_settings(config):
    """The ``init_args`` of a configured TensorBoard logger (``None`` for other loggers)."""
    logger = config.get("trainer", {}).get("logger")
    if not hasattr(logger, "get") or not str(logger.get("class_path", "")).endswith("TensorBoardLogger"):
        return None
    return logger.get("init_args")


def _runs_folder(init_args) -> Path:
    return Path(init_args.get("save_dir") or ".") / (init_args.get("name") or "lightning_logs")


def _last_checkpoint(config, point_logger: bool) -> Path | None:
    """The ``checkpoints/last.ckpt`` that ``--ckpt_path last`` stands for: the TensorBoard
    logger's run's when it is versioned, else the newest ``version_<n>`` run's that has one
    (``None`` when there is none). ``point_logger``: an unversioned logger is pointed at that run,
    so a resumed run's curves continue there."""
    init_args = _tensorboard_settings(config)
    if init_args is None:
        return None
    runs, version = _runs_folder(init_args), init_args.get("version")
    if version is None:
        versions = [
            int(match.group(1)) for path in runs.glob("version_*/checkpoints/last.ckpt")
            if (match := re.fullmatch(r"version_(\d+)", path.parent.parent.name))
        ]
        if not versions:
            return None
        version = max(versions)
        if point_logger:
            init_args["version"] = version
    run = runs / (f"version_{version}" if isinstance(version, int) else str(version))
    last = run / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def _found(last: Path | None, config) -> Path:
    """The checkpoint ``--ckpt_path last`` stands for in an evaluation, which has nothing to
    evaluate without it."""
    if last is None:
        init_args = _tensorboard_settings(config)
        where = f"under '{_runs_folder(init_args)}'" if init_args is not None else "(no TensorBoard logger)"
        raise ConfigError(
            f"`--ckpt_path last` finds no run of this config {where} with a checkpoints/last.ckpt to "
            "evaluate; pass the checkpoint file as `--ckpt_path`."
        )
    return last


def _log_evaluation_in_its_run(config, checkpoint: Path, subcommand: str) -> None:
    """Log an evaluation of a run's checkpoint (one in ``<run>/checkpoints/``) inside that run,
    at ``<run>/<subcommand>/<checkpoint stem>``, not as a new ``version_<n>`` beside the training
    runs: the unversioned TensorBoard logger is pointed there."""
    init_args = _tensorboard_settings(config)
    if init_args is None or init_args.get("version") is not None or checkpoint.parent.name != "checkpoints":
        return
    init_args["save_dir"] = str(checkpoint.expanduser().parent.parent)
    init_args["name"], init_args["version"] = subcommand, checkpoint.stem


def _unknown_setting(message: str, argv: list[str], subcommand_parsers: dict) -> str | None:
    """One paragraph for jsonargparse's report of an unknown key: the key, where it was given
    (the command line, a ``-c`` file), the closest valid key and the class's settings; ``None``
    when ``message`` reports something else."""
    subcommand = next((token for token in argv if token in SUBCOMMANDS), None)
    match = re.search(
        r'Parser key "(\w+)":.*?Problem with given class_path \'([\w.]+)\':\s*'
        r"Option '(\w+)' is not accepted", message, flags=re.DOTALL,
    )
    if match:
        section, class_path, key = match.groups()
        # Lightning passes an optimizer the model's parameters, and a scheduler its optimizer
        linked = {"optimizer": ("params",), "lr_scheduler": ("optimizer",)}.get(section, ())
        valid = _init_settings(class_path, skip=linked)
        path = [section, "init_args", key]
        return (f"`{section}.init_args.{key}`{_given_in(argv, path)} is not a setting of {class_path}"
                f"{_did_you_mean(key, valid)} Its settings: {', '.join(valid) or 'none'}.")
    match = re.search(r"does not accept option '([\w.]+)'|unrecognized arguments: --([\w.]+)", message)
    if match is None or subcommand not in subcommand_parsers:
        return None
    key = match.group(1) or match.group(2)
    valid = [action.dest for action in subcommand_parsers[subcommand]._actions if action.dest != "help"]
    return (f"`{key}`{_given_in(argv, key.split('.'))} is not a setting of `l2o {subcommand}`"
            f"{_did_you_mean(key, valid)} Run `l2o {subcommand} --help` for the accepted settings.")


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
