"""Meta-training under DDP (2 CPU processes, gloo): the processes own different trajectories,
end with identical L2O weights, and compute what one process with both tasks computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REPO
from subprocess_helpers import callbacks_config, run_l2o

from l2o_lightning.tb import raw_scalars

pytestmark = pytest.mark.slow  # real training runs

# 4 meta-steps (2 rounds of trajectories of 2 truncations of 2 steps), 2 tasks in all, no validation
TINY = [
    "fit", "-c", "configs/meta_train/leaky_relu.yaml",
    "--model.unroll.n_iters", "4", "--model.unroll.length", "2", "--model.init_args.trajectories", "4",
    "--trainer.limit_val_batches", "0",
]
# probes follow the first task of process 0
PROBES = [{"class_path": "l2o_lightning.callbacks.SymmetryProbe", "init_args": {"every_n_steps": 1}},
          {"class_path": "l2o_lightning.callbacks.CovarianceProbe",
           "init_args": {"every_n_steps": 4, "num_units": 2}}]


def test_two_ddp_processes_equal_one_process_with_both_tasks(mnist_dir, tmp_path):
    def run(name: str, *args: str) -> Path:
        saver = {"class_path": "subprocess_helpers.SaveRankWeights",
                 "init_args": {"folder": str(tmp_path / name)}}
        config = callbacks_config(tmp_path / f"{name}.yaml", [saver, *PROBES], append=True)
        result = run_l2o([*TINY, "-c", str(config), *args, "--trainer.logger.init_args.save_dir",
                          str(tmp_path / "logs"), "--trainer.logger.init_args.version", name], cwd=REPO)
        assert result.returncode == 0, result.stderr[-3000:]
        return tmp_path / "logs" / "meta_train" / "leaky_relu" / name

    # task k of the single process is process k's only task: same initialisation, same minibatches
    single = run("single", "--model.unroll.tasks_per_step", "2", "--data.batches_per_step", "4")
    ddp = run("ddp", "--model.unroll.tasks_per_step", "1", "--data.batches_per_step", "2",
              "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp")

    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    alone = torch.load(tmp_path / "single" / "rank0.pt", weights_only=True)
    for name, weight in ranks[0].items():
        assert torch.equal(weight, ranks[1][name]), f"processes disagree on {name}"
        torch.testing.assert_close(weight, alone[name], rtol=1e-4, atol=1e-5)

    # the processes ran different trajectories, which equal the single process's tasks
    checkpoints = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (single, ddp)]
    assert checkpoints[0]["global_step"] == checkpoints[1]["global_step"] == 4
    trajectories = [checkpoint["meta_training"]["trajectory"] for checkpoint in checkpoints]
    alone_params, ddp_params = (trajectory["params"] for trajectory in trajectories)  # [processes, tasks, D]
    assert alone_params.shape[:2] == (1, 2) and ddp_params.shape[:2] == (2, 1)
    assert not torch.allclose(ddp_params[0], ddp_params[1])
    torch.testing.assert_close(ddp_params[:, 0], alone_params[0], rtol=1e-4, atol=1e-6)

    # logged meta-losses are averaged over processes: the same curve
    curves = [[value for _, value in raw_scalars(d)["meta/loss"]] for d in (single, ddp)]
    assert len(curves[0]) == 4
    torch.testing.assert_close(torch.tensor(curves[1]), torch.tensor(curves[0]), rtol=1e-5, atol=1e-6)

    # the probes show process 0's task, the single process's first task
    for tag in ("symmetry/rescale/update/sum_abs", "covariance/top_eig"):
        alone_curve, ddp_curve = (raw_scalars(d)[tag] for d in (single, ddp))
        # every step; every 4: k = 1, 4, 8 at global_step k - 1
        steps = list(range(8)) if tag.startswith("symmetry") else [0, 3, 7]
        assert [s for s, _ in alone_curve] == [s for s, _ in ddp_curve] == steps
        values = [torch.tensor([v for _, v in curve]) for curve in (ddp_curve, alone_curve)]
        torch.testing.assert_close(*values, rtol=1e-3, atol=1e-9)


def test_a_truncation_diverged_on_one_process_is_skipped_on_both(mnist_dir, tmp_path):
    saver = {"class_path": "subprocess_helpers.SaveRankWeights",
             "init_args": {"folder": str(tmp_path / "weights")}}
    explode = {"class_path": "subprocess_helpers.ExplodeOnRank", "init_args": {"rank": 1, "batch": 1}}
    config = callbacks_config(tmp_path / "explode.yaml", [saver, explode], append=True)
    result = run_l2o([*TINY, "-c", str(config), "--model.unroll.tasks_per_step", "1",
                      "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                      "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")], cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]

    # process 1 alone diverged in batch 1; both skipped its meta-step and stayed in step
    ranks = [torch.load(tmp_path / "weights" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name, weight in ranks[0].items():
        assert torch.isfinite(weight).all() and torch.equal(weight, ranks[1][name]), name
    scalars = raw_scalars(tmp_path / "logs" / "meta_train" / "leaky_relu" / "version_0")
    assert [value for _, value in scalars["meta/diverged"]] == [0, 1, 1, 1, 1]
    # the budget counts meta-steps taken: 4 (2 rounds x 2 truncations), so 5 batches with the skipped one
    assert [value for _, value in scalars["meta/trajectory_step"]] == [2, 4, 2, 4, 2]
    checkpoint = torch.load(next((tmp_path / "logs").glob("**/last.ckpt")), weights_only=True)
    assert checkpoint["global_step"] == 4 and checkpoint["meta_training"]["progress"]["diverged"] == 1


def test_evaluation_optimizees_are_shared_out_and_gathered(mnist_dir, tmp_path):
    result = run_l2o([*TINY, "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")], cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = next((tmp_path / "logs").glob("**/last.ckpt"))

    def test(name: str, version: int, *args: str) -> dict:
        counter = {"class_path": "subprocess_helpers.RecordEvaluationTasks",
                   "init_args": {"folder": str(tmp_path / name)}}
        config = callbacks_config(tmp_path / f"{name}.yaml", [counter], append=True)
        result = run_l2o(["test", "-c", "configs/meta_train/leaky_relu.yaml", "-c", str(config),
                          "--ckpt_path", str(checkpoint), "--model.evaluation.tasks", "3",
                          "--model.evaluation.test_n_iters", "6", *args], cwd=REPO)
        assert result.returncode == 0, result.stderr[-3000:]
        return raw_scalars(checkpoint.parent.parent / "test" / "last" / f"version_{version}")

    alone = test("single", 0)
    ddp = test("ddp", 1, "--trainer.accelerator", "cpu", "--trainer.devices", "2",
               "--trainer.strategy", "ddp")
    # 3 optimizees: process 0 trains tasks 0 and 2, process 1 task 1; one process all three
    counts = [torch.load(tmp_path / folder) for folder in ("single/rank0.pt", "ddp/rank0.pt", "ddp/rank1.pt")]
    assert counts == [[3], [2], [1]]
    # gathered, the curve and the final optimizees' test numbers are the single process's
    for tag in ("test/loss_curve", "test/final_loss", "test/final_test_loss", "test/final_test_acc"):
        values = [torch.tensor([v for _, v in run[tag]]) for run in (ddp, alone)]
        assert len(values[0]) == (6 if tag == "test/loss_curve" else 1)
        torch.testing.assert_close(*values, rtol=1e-5, atol=1e-6)
