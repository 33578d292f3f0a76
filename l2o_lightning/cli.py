"""The ``l2o`` command: a LightningCLI whose model is chosen by class path."""

from __future__ import annotations

import sys
import warnings

import lightning as L
from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI

from l2o_lightning.data import MNISTDataModule
from l2o_lightning.errors import ConfigError, DivergenceError

SUBCOMMANDS = ("fit", "validate", "test", "predict")


class L2OCLI(LightningCLI):
    """``l2o fit|validate|test`` over any LightningModule and the MNIST data module."""

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:  # a constructor rejected a configured value
            raise ConfigError(_innermost_reason(str(err))) from None


def _innermost_reason(message: str) -> str:
    """jsonargparse wraps a constructor's error in a union report; keep the constructor's
    own sentence (the first ``- `` bullet) when there is one."""
    bullets = [line.strip()[2:] for line in message.splitlines() if line.strip().startswith("- ")]
    return bullets[0] if bullets else message


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
        print(f"l2o: error: {err}\n(run `{prog} --help` for the accepted settings)", file=sys.stderr)
        sys.exit(2)
    except ConfigError as err:
        print(f"l2o: error: {err}", file=sys.stderr)
        sys.exit(2)
    except DivergenceError as err:
        print(f"l2o: error: {err}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
