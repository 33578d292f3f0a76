"""How long runs are and what they show while running: meta-training's progress bar counts
towards its budget, and every run evaluates after its last step whatever the interval."""

from __future__ import annotations

import lightning as L
import pytest
import yaml
from conftest import REPO

from l2o_lightning.cli import main
from l2o_lightning.tb import read_scalars

pytestmark = pytest.mark.slow  # real training runs


class RecordBarTotal(L.Callback):
    """Records the training progress bar's total at every training batch (``RecordBarTotal.totals``)."""

    totals: list = []

    def on_train_batch_end(self, trainer, *args) -> None:
        RecordBarTotal.totals.append(trainer.progress_bar_callback.train_progress_bar.total)


def test_meta_training_shows_its_total_and_validates_after_the_last_step(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["l2o"])
    record = tmp_path / "record.yaml"
    callback = {"class_path": f"{__name__}.RecordBarTotal"}
    record.write_text(yaml.safe_dump({"trainer": {"callbacks+": [callback]}}))
    RecordBarTotal.totals = []
    # 3 trajectories of 2 truncations; validation every 4 meta-steps would miss the last (6th)
    main(["fit", "-c", "configs/meta_train/leaky_relu.yaml", "-c", str(record),
          "--model.init_args.n_iters", "4", "--model.init_args.unroll", "2", "--data.batches_per_step", "2",
          "--model.init_args.trajectories", "3", "--model.init_args.val_n_iters", "2",
          "--model.init_args.eval_tasks", "1", "--trainer.val_check_interval", "4",
          "--trainer.limit_val_batches", "1", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
          "--trainer.enable_model_summary", "false"])
    assert RecordBarTotal.totals == [6] * 6  # trajectories x n_iters / unroll, not `?`
    scalars = read_scalars(tmp_path / "logs" / "meta_train" / "leaky_relu" / "version_0")
    assert [step for step, _ in scalars["meta/loss"]] == list(range(6))
    assert [step for step, _ in scalars["val/mean_loss"]] == [3, 5]


def test_a_shortened_meta_test_still_evaluates_the_test_split_at_its_end(run_cli, tmp_path):
    run_cli("fit", "-c", "configs/meta_test/leaky_relu.yaml", "-c", "configs/optimizers/sgd.yaml",
            "--trainer.max_steps", "30", "--trainer.val_check_interval", "20")
    (run_dir,) = (tmp_path / "logs").glob("meta_test/**/version_0")
    scalars = read_scalars(run_dir)
    assert len(scalars["train/loss"]) == 30
    assert [step for step, _ in scalars["test/acc"]] == [19, 29]  # the interval's, then the last step's
    assert [step for step, _ in scalars["test/loss"]] == [19, 29]
