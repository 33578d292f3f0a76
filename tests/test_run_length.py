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
    """Records the training progress bar's total at every training batch (``RecordBarTotal.totals``)
    and the trainer's ``max_steps`` (``RecordBarTotal.max_steps``)."""

    totals: list = []
    max_steps: int | None = None

    def on_train_batch_end(self, trainer, *args) -> None:
        RecordBarTotal.totals.append(trainer.progress_bar_callback.train_progress_bar.total)
        RecordBarTotal.max_steps = trainer.max_steps


class RecordEpochLoss(L.Callback):
    """Records the ``meta/epoch_loss`` the callbacks see after every training batch (what a
    ``ModelCheckpoint`` monitoring it finds): ``RecordEpochLoss.seen``."""

    seen: list = []

    def on_train_batch_end(self, trainer, *args) -> None:
        value = trainer.callback_metrics.get("meta/epoch_loss")
        RecordEpochLoss.seen.append(None if value is None else float(value))


def test_meta_training_shows_its_total_and_validates_after_the_last_step(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["l2o"])
    record = tmp_path / "record.yaml"
    callback = {"class_path": f"{__name__}.RecordBarTotal"}
    record.write_text(yaml.safe_dump({"trainer": {"callbacks+": [callback]}}))
    RecordBarTotal.totals = []
    # 3 trajectories of 2 truncations; validation every 4 meta-steps would miss the last (6th)
    main(["fit", "-c", "configs/meta_train/leaky_relu.yaml", "-c", str(record),
          "--model.unroll.n_iters", "4", "--model.unroll.length", "2", "--data.batches_per_step", "2",
          "--model.init_args.trajectories", "3", "--model.evaluation.val_n_iters", "2",
          "--model.evaluation.tasks", "1", "--trainer.val_check_interval", "4",
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


class Interrupted(Exception):
    """Ends a run as a crash would: after its checkpoints so far, before the next one."""


class InterruptAtBatch(L.Callback):
    """Raises :class:`Interrupted` as training batch ``batch`` (0-based) starts."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == self.batch:
            raise Interrupted


def test_a_resumed_meta_training_shows_its_budget_as_total(mnist_dir, tmp_path, monkeypatch):
    """A run resumed from a checkpoint taken mid-epoch (meta-training's one endless epoch) skips
    the epoch start where Lightning gives the bar its total; it still counts towards its budget."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["l2o"])
    every_2 = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
               "init_args": {"every_n_train_steps": 2, "save_top_k": 0, "save_last": True}}
    record = {"class_path": f"{__name__}.RecordBarTotal"}
    epoch_loss = {"class_path": f"{__name__}.RecordEpochLoss"}
    stop = {"class_path": f"{__name__}.InterruptAtBatch", "init_args": {"batch": 3}}

    def fit(name: str, callbacks: list[dict], *extra: str) -> None:
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
        RecordBarTotal.totals, RecordEpochLoss.seen = [], []
        # 3 trajectories of 2 truncations: a budget of 6 meta-steps; an epoch of 1 trajectory
        main(["fit", "-c", "configs/meta_train/leaky_relu.yaml", "-c", str(config),
              "--model.unroll.n_iters", "4", "--model.unroll.length", "2",
              "--model.init_args.epoch_trajectories", "1",
              "--data.batches_per_step", "2", "--model.init_args.trajectories", "3",
              "--trainer.limit_val_batches", "0", "--trainer.enable_model_summary", "false",
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), *extra])

    with pytest.raises(Interrupted):  # after the checkpoint of meta-step 2, in batch 3
        fit("interrupted", [every_2, record, epoch_loss, stop])
    assert RecordBarTotal.totals == [6] * 3
    first_epoch = RecordEpochLoss.seen[1]
    assert RecordEpochLoss.seen == [None, first_epoch, first_epoch]  # an epoch ends every 2 meta-steps
    fit("resumed", [every_2, record, epoch_loss], "--ckpt_path", "last")
    # meta-steps 3 to 6 of 6: the total is the budget, not `?` (None)
    assert RecordBarTotal.totals == [6] * 4
    assert RecordBarTotal.max_steps == 6
    # mid-epoch after the resume, the callbacks still see the last epoch's loss (from the checkpoint)
    assert RecordEpochLoss.seen[0] == first_epoch and None not in RecordEpochLoss.seen
