"""The ``l2o`` command: a LightningCLI whose model is chosen by class path."""

from __future__ import annotations

import sys
import warnings

import lightning as L
from lightning.pytorch.cli import LightningCLI

from l2o_lightning.data import MNISTDataModule
from l2o_lightning.errors import ConfigError


class L2OCLI(LightningCLI):
    """``l2o fit|validate|test`` over any LightningModule and the MNIST data module."""


def main(args: list[str] | None = None) -> None:
    """Run the CLI; invalid settings end with one paragraph on stderr and exit code 2."""
    # the modules' own configure_optimizers only explains how to pass --optimizer
    warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden.*")
    try:
        L2OCLI(
            L.LightningModule,
            MNISTDataModule,
            subclass_mode_model=True,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except ConfigError as err:
        print(f"l2o: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
