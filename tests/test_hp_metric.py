"""No run logs Lightning's placeholder ``hp_metric = -1``: not with any shipped config's
TensorBoard logger, not with Lightning's default logger."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from conftest import REPO
from lightning.pytorch.loggers import TensorBoardLogger

from l2o_lightning.cli import L2OCLI, main
from l2o_lightning.data import MNISTDataModule
from l2o_lightning.tb import read_scalars

# every shipped config a run starts from (the meta-test ones with an optimizer config)
RUN_CONFIGS = sorted(
    [str(path.relative_to(REPO)) for path in (REPO / "configs" / "meta_train").glob("*.yaml")]
    + [str(path.relative_to(REPO)) for path in (REPO / "configs" / "paper").glob("*/*.yaml")
       if path.parent.name != "base"]
) + [f"configs/meta_test/{name}.yaml" for name in ("leaky_relu", "bn_relu", "sigmoid")]


def test_the_run_configs_are_found():
    assert len(RUN_CONFIGS) > 25 and "configs/paper/meta_train/leaky_relu.yaml" in RUN_CONFIGS


@pytest.mark.parametrize("config", RUN_CONFIGS)
def test_no_shipped_config_logs_the_placeholder_hp_metric(config, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["l2o"])
    optimizer = ["-c", "configs/optimizers/sgd.yaml"] if config.startswith("configs/meta_test/") else []
    if "pretrained:" in (REPO / config).read_text():  # not every learned optimizer is shipped yet
        optimizer = ["--optimizer.init_args.checkpoint", "pretrained:leaky_relu"]
    cli = L2OCLI(
        L.LightningModule, MNISTDataModule, subclass_mode_model=True, run=False,
        args=["-c", config, *optimizer, "--trainer.logger.init_args.save_dir", str(tmp_path)],
    )
    loggers = [logger for logger in cli.trainer.loggers if isinstance(logger, TensorBoardLogger)]
    assert loggers, f"{config} has no TensorBoard logger"
    assert all(logger._default_hp_metric is False for logger in loggers)


def test_a_run_with_lightnings_default_logger_logs_no_hp_metric(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["l2o"])
    main(["fit", "--model", "OptimizeeModule", "--optimizer", "SGD", "--optimizer.lr", "0.1",
          "--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false", "--trainer.enable_checkpointing", "false"])
    (run_dir,) = Path(tmp_path, "lightning_logs").iterdir()
    tags = set(read_scalars(run_dir))
    assert "train/loss" in tags
    assert "hp_metric" not in tags
