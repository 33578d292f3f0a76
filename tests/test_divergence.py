"""Divergence guards: a non-finite truncation in meta-training takes no meta-step and restarts
its trajectories; a streak of them, or an exploding L2O in meta-testing, stops with exit 3."""

from __future__ import annotations

import math
import re

import lightning as L
import pytest
import torch
import yaml

from l2o_lightning.checkpoints import checkpoint_entry
from l2o_lightning.learned import LSTMOptimizerNet
from l2o_lightning.tb import raw_scalars

pytestmark = pytest.mark.slow  # real training runs

# trajectories of 2 truncations of 2 steps, no validation
TINY = ("fit", "-c", "configs/meta_train/leaky_relu.yaml", "--model.unroll.n_iters", "4",
        "--model.unroll.length", "2", "--data.batches_per_step", "2", "--trainer.limit_val_batches", "0")


class ExplodeAt(L.Callback):
    """Multiply the L2O's output by ``1e30`` during training batch ``batch`` only (its optimizee
    parameters overflow), and record the L2O weights around that batch (the last instance is
    ``ExplodeAt.latest``)."""

    latest: ExplodeAt | None = None

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.weights: list[torch.Tensor] = []
        ExplodeAt.latest = self

    def _weights(self, pl_module) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in pl_module.net.parameters()])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        pl_module.net.out_mult = 1e30 if batch_idx == self.batch else 0.1
        if batch_idx == self.batch:
            self.weights.append(self._weights(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx == self.batch:
            self.weights.append(self._weights(pl_module))


def _exit_code(run_cli, *args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(*args)
    return exit_info.value.code


def test_a_diverged_truncation_is_skipped_and_its_trajectory_restarts(run_cli, tmp_path):
    config = tmp_path / "explode.yaml"
    config.write_text(yaml.safe_dump({"trainer": {"callbacks+": [
        {"class_path": f"{__name__}.ExplodeAt", "init_args": {"batch": 1}}]}}))
    run_cli(*TINY, "-c", str(config), "--model.init_args.trajectories", "2",
            "--model.init_args.epoch_trajectories", "1")

    before, after = ExplodeAt.latest.weights
    assert torch.isfinite(after).all() and torch.equal(before, after)  # no meta-step, no NaN
    scalars = raw_scalars(tmp_path / "logs" / "meta_train" / "leaky_relu" / "version_0")
    values = {tag: [value for _, value in series] for tag, series in scalars.items()}
    # batch 1 diverged: counted, its trajectory dropped (batch 2 starts trajectory 2 at its step 2)
    assert values["meta/diverged"] == [0, 1, 1, 1, 1]
    assert not torch.isfinite(torch.tensor(values["meta/loss"][1]))
    assert all(torch.isfinite(torch.tensor(v)) for i, v in enumerate(values["meta/loss"]) if i != 1)
    assert values["meta/trajectory_step"] == [2, 4, 2, 4, 2]
    assert values["meta/trajectory"] == [1, 1, 2, 2, 3]
    # epochs of one trajectory: the diverged one's loss is inf (never the kept best epoch)
    epoch_steps = [step for step, _ in scalars["meta/epoch_loss"]]
    epoch_losses = values["meta/epoch_loss"]
    assert epoch_steps == [1, 3] and epoch_losses[0] == math.inf and math.isfinite(epoch_losses[1])


def test_diverging_streak_stops_meta_training_with_exit_3(run_cli, capsys):
    code = _exit_code(run_cli, *TINY, "--model.net.out_mult", "1e30",
                      "--model.init_args.max_diverged_in_a_row", "3")
    assert code == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(r"non-finite in 3 truncations in a row \(`model.max_diverged_in_a_row`\), the last at "
                     r"meta-step 0 \(optimizee step 2, meta-optimizer Adam\)", err), err


def _exploding_l2o_stderr(run_cli, capsys, tmp_path, out_mult: str, steps: str) -> str:
    """Meta-test an untrained LSTM scaled by ``out_mult``; it must stop with exit 3 and no
    traceback. Returns its stderr."""
    checkpoint = tmp_path / "l2o.ckpt"
    torch.save({"l2o": checkpoint_entry(LSTMOptimizerNet())}, checkpoint)
    code = _exit_code(run_cli, "fit", "-c", "configs/meta_test/leaky_relu.yaml", "-c",
                      "configs/optimizers/l2o.yaml", "--optimizer.checkpoint", str(checkpoint),
                      "--optimizer.out_mult", out_mult, "--trainer.max_steps", steps)
    assert code == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_exploding_l2o_stops_meta_testing_naming_step_and_optimizer(run_cli, capsys, tmp_path):
    err = _exploding_l2o_stderr(run_cli, capsys, tmp_path, "1e30", "5")
    assert re.search(r"diverged: train loss is nan at step 1 with optimizer L2O", err), err
    assert "`--optimizer.out_mult`" in err and "`--optimizer.lr`" not in err  # the L2O has no lr


def test_a_finite_blow_up_stops_meta_testing_like_a_non_finite_loss(run_cli, capsys, tmp_path):
    err = _exploding_l2o_stderr(run_cli, capsys, tmp_path, "1e8", "50")
    match = re.search(r"diverged: train loss is (\S+) at step (\d+) with optimizer L2O \(over 1e\+06 x its "
                      r"first, (\S+)\)", err)
    assert match, err
    loss, step, first = float(match.group(1)), int(match.group(2)), float(match.group(3))
    assert math.isfinite(loss) and loss > 1e6 * first and 2.0 < first < 2.6  # cross-entropy of 10 classes
    (run_dir,) = (tmp_path / "logs").glob("meta_test/**/version_0")
    logged = raw_scalars(run_dir)["train/loss"]
    assert [s for s, _ in logged] == list(range(step))  # the blown-up step is neither logged nor taken
    assert all(value <= 1e6 * first for _, value in logged)
