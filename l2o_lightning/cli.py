"""The ``l2o`` command: a LightningCLI whose model is chosen by class path."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import lightning as L
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI

from l2o_lightning import REPO_ROOT
from l2o_lightning.data import MNISTDataModule
from l2o_lightning.errors import ConfigError, DivergenceError
from l2o_lightning.learned import read_checkpoint

SUBCOMMANDS = ("fit", "validate", "test", "predict")
CKPT_KEYWORDS = ("last", "best", "hpc")  # resolved by Lightning itself


class L2OCLI(LightningCLI):
    """``l2o fit|validate|test`` over any LightningModule and the MNIST data module.

    Checkpoints are read with ``weights_only=True`` unless ``--weights_only false`` is given;
    a ``--ckpt_path`` file is checked before anything runs (missing, unreadable, or written by
    another model: one-paragraph error). ``--ckpt_path last`` resumes the newest run of the
    configured TensorBoard logger that has a ``checkpoints/last.ckpt`` and logs into that
    run's directory (unless ``trainer.logger.init_args.version`` is set).
    """

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        config = self.config.get(self.config.get("subcommand") or "", None)
        if config is None:
            return
        if config.get("weights_only") is None:
            config["weights_only"] = True
        _fill_run_name(config)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            _resume_logger_version(config)
        elif ckpt_path and ckpt_path not in CKPT_KEYWORDS and "://" not in ckpt_path:
            _check_checkpoint(ckpt_path, config)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:  # a constructor rejected a configured value
            raise ConfigError(_innermost_reason(str(err))) from None


def _check_checkpoint(ckpt_path: str, config) -> None:
    """A :class:`ConfigError` unless ``ckpt_path`` reads with ``weights_only=True`` and was
    written by the configured model class."""
    where = f"checkpoint '{ckpt_path}' (setting `ckpt_path`)"
    hint = "pass a checkpoint written by an `l2o fit` run with this config, or `--ckpt_path last`"
    content = read_checkpoint(ckpt_path, where, hint)
    hparams = content.get("hyper_parameters")
    written_by = hparams.get("_class_path") if isinstance(hparams, dict) else None
    model = config.get("model")
    configured = model.get("class_path") if hasattr(model, "get") else None
    if written_by and configured and written_by != configured:
        raise ConfigError(f"{where} was written by {written_by}, but the model is {configured}; {hint}.")


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
    name, lower case) and ``{config}`` (the last ``-c`` file as ``<folder>/<stem>``)."""
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
        "config": f"{files[-1].parent.name}/{files[-1].stem}" if files else "none",
    }
    try:
        init_args["name"] = name.format(**fields)
    except (KeyError, IndexError, ValueError):
        raise ConfigError(
            f"`trainer.logger.init_args.name` {name!r} has a placeholder other than "
            "{optimizee}, {optimizer}, {config}; use those, or a name without braces."
        ) from None


def _resume_logger_version(config) -> None:
    """Point an unversioned TensorBoard logger at the newest ``version_<n>`` run that holds a
    ``checkpoints/last.ckpt``, so ``--ckpt_path last`` finds it and the curves continue there."""
    logger = config.get("trainer", {}).get("logger")
    if not hasattr(logger, "get") or not str(logger.get("class_path", "")).endswith("TensorBoardLogger"):
        return
    init_args = logger.get("init_args")
    if init_args is None or init_args.get("version") is not None:
        return
    runs = Path(init_args.get("save_dir") or ".") / (init_args.get("name") or "lightning_logs")
    versions = [
        int(match.group(1)) for path in runs.glob("version_*/checkpoints/last.ckpt")
        if (match := re.fullmatch(r"version_(\d+)", path.parent.parent.name))
    ]
    if versions:
        init_args["version"] = max(versions)


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


def main(args: list[str] | None = None) -> None:
    """Run the CLI; an invalid setting ends with one paragraph on stderr and exit code 2,
    a diverging run with exit code 3."""
    # the modules' own configure_optimizers only explains how to pass --optimizer
    warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden.*")
    no_exit = {"exit_on_error": False}
    try:
        L2OCLI(
            L.LightningModule,
            MNISTDataModule,
            subclass_mode_model=True,
            save_config_kwargs={"overwrite": True},
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
