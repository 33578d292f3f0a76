"""What a run records of itself: ``hparams.yaml`` holds the settings it ran with (the data root
as resolved, not LightningCLI's loader entry)."""

from __future__ import annotations

import yaml


def test_hparams_yaml_holds_the_resolved_data_root_and_no_loader_entry(run_cli, tmp_path, mnist_dir):
    run_cli("fit", "-c", "configs/meta_test/leaky_relu.yaml", "-c", "configs/optimizers/sgd.yaml",
            "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0")
    (hparams,) = (tmp_path / "logs").glob("meta_test/**/version_0/hparams.yaml")
    recorded = yaml.safe_load(hparams.read_text())
    assert "_instantiator" not in recorded
    assert recorded["data_dir"] == str(mnist_dir)  # L2O_DATA_DIR supplied it: `data.data_dir` was null
    assert (recorded["hidden"], recorded["activation"], recorded["batch_size"]) == ([20], "leaky_relu", 128)
    (config,) = (tmp_path / "logs").glob("meta_test/**/version_0/config.yaml")
    assert yaml.safe_load(config.read_text())["data"]["data_dir"] is None  # the recipe stays as given
