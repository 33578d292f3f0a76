"""Resuming meta-training after a real SIGKILL: the run continues exactly where its last
checkpoint left off, and its TensorBoard curves have every step once."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO
from subprocess_helpers import callbacks_config, run_l2o

from l2o_lightning.tb import raw_scalars, summary_values

pytestmark = pytest.mark.slow  # real training runs

# 8 meta-steps: trajectories of 2 truncations of 2 steps, validation after batches 2 and 5
TINY = [
    "fit", "-c", "configs/meta_train/leaky_relu.yaml",
    "--model.unroll.n_iters", "4", "--model.unroll.length", "2", "--data.batches_per_step", "2",
    "--model.init_args.trajectories", "4", "--model.evaluation.val_n_iters", "2",
    "--model.evaluation.tasks", "1", "--trainer.val_check_interval", "3",
    "--trainer.limit_val_batches", "1",
]
BEST = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"monitor": "val/mean_loss", "save_last": True, "enable_version_counter": False,
                      "filename": "best-step{step}", "auto_insert_metric_name": False}}
EVERY_2 = {"every_n_train_steps": 2, "save_top_k": 0, "save_last": True, "enable_version_counter": False}
PERIODIC = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": EVERY_2}
# probes log at optimizee steps, inside the truncations a resumed run may recompute
PROBES = [{"class_path": "l2o_lightning.callbacks.SymmetryProbe", "init_args": {"every_n_steps": 1}},
          {"class_path": "l2o_lightning.callbacks.TailIndexProbe",
           "init_args": {"every_n_steps": 4, "num_units": 2}}]
# killed right after the checkpoint of step 4 is written, before that truncation is logged
KILL_AFTER_CHECKPOINT = {"class_path": "subprocess_helpers.CheckpointThenKill",
                         "init_args": {**EVERY_2, "kill_at_step": 4}}
# killed as batch 7 starts: batches 6 and 7 were logged after the checkpoint of step 6
KILL_LATER = {"class_path": "subprocess_helpers.KillAtBatch", "init_args": {"batch": 7}}


def test_sigkilled_meta_training_resumes_exactly_without_gaps_or_duplicates(mnist_dir, tmp_path):
    def run(name: str, callbacks: list[dict], *extra: str):
        config = callbacks_config(tmp_path / f"{name}.yaml", [*callbacks, *PROBES])
        return run_l2o([*TINY, "-c", str(config), *extra,
                        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")], cwd=REPO)

    reference = run("reference", [BEST, PERIODIC], "--trainer.logger.init_args.version", "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]

    runs = tmp_path / "logs" / "meta_train" / "leaky_relu"
    last = runs / "version_0" / "checkpoints" / "last.ckpt"
    killed = run("killed", [BEST, KILL_AFTER_CHECKPOINT])
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert torch.load(last, weights_only=True)["global_step"] == 4
    interrupted = run("interrupted", [BEST, PERIODIC, KILL_LATER], "--ckpt_path", "last")
    assert interrupted.returncode == -9, interrupted.stderr[-3000:]
    assert torch.load(last, weights_only=True)["global_step"] == 6
    resumed = run("resumed", [BEST, PERIODIC], "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    assert sorted(p.name for p in runs.iterdir()) == ["reference", "version_0"]  # resumed in place
    assert len(list((runs / "version_0").glob("events.out.tfevents.*"))) == 3
    expected, got = raw_scalars(runs / "reference"), raw_scalars(runs / "version_0")
    for tag in ("meta/loss", "meta/optimizee_loss", "meta/trajectory", "meta/diverged", "val/mean_loss"):
        steps = [step for step, _ in got[tag]]
        assert steps == sorted(set(steps)), f"{tag}: duplicate or unordered steps {steps}"
        assert got[tag] == expected[tag], tag  # same values: the resumed run is the same run
    assert [step for step, _ in got["meta/loss"]] == list(range(8))
    for tag in ("symmetry/rescale/update/abs_sum", "tail_index/update"):  # x = optimizee step
        assert got[tag] == expected[tag], tag
    assert [step for step, _ in got["symmetry/rescale/update/abs_sum"]] == list(range(16))

    final = [torch.load(runs / run / "checkpoints" / "last.ckpt", weights_only=True)
             for run in ("reference", "version_0")]
    assert final[0]["global_step"] == final[1]["global_step"] == 8
    for name, weight in final[0]["l2o"]["state_dict"].items():
        assert torch.equal(weight, final[1]["l2o"]["state_dict"][name]), name


def test_a_run_killed_mid_truncation_resumes_without_logging_a_probe_value_twice(mnist_dir, tmp_path):
    symmetry = {"class_path": "l2o_lightning.callbacks.SymmetryProbe", "init_args": {"every_n_steps": 1}}
    # after symmetry: killed at step 5, it logged step 4, and symmetry step 5, before the kill
    stats = {"class_path": "l2o_lightning.callbacks.UpdateStatsProbe", "init_args": {"every_n_steps": 1}}
    killer = {"class_path": "subprocess_helpers.KillAfterProbing", "init_args": {"kill_at": 5}}

    def run(name: str, callbacks: list[dict], *extra: str):
        config = callbacks_config(tmp_path / f"{name}.yaml", [PERIODIC, *callbacks])
        return run_l2o([*TINY, "-c", str(config), *extra, "--model.init_args.trajectories", "2",
                        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")], cwd=REPO)

    reference = run("reference", [symmetry, stats], "--trainer.logger.init_args.version", "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = run("killed", [killer, stats])  # optimizee steps 4-5 are meta-step 2, after the checkpoint of 2
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run("resumed", [symmetry, stats], "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    runs = tmp_path / "logs" / "meta_train" / "leaky_relu"
    expected, got = raw_scalars(runs / "reference"), raw_scalars(runs / "version_0")
    for tag in ("symmetry/rescale/update/abs_sum", "update/norm", "meta/loss"):
        assert got[tag] == expected[tag], tag  # every step once, the values of the uninterrupted run
    tag = "update_hist/linears.0.weight"
    histograms = [[step for step, value in summary_values(runs / run) if value.tag == tag]
                  for run in ("reference", "version_0")]
    assert histograms[0] == histograms[1] == list(range(8))
