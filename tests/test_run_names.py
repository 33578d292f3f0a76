"""Where runs log: meta-tests by optimizee and optimizer, and an evaluation of a run's
checkpoint (``l2o test``) inside that run, not as a new version beside the training runs."""

from __future__ import annotations

import pytest
import yaml

from l2o_lightning.cli_runs import _fill_run_name
from l2o_lightning.tb import read_scalars

pytestmark = pytest.mark.slow  # real training runs

TINY = ["--model.unroll.n_iters", "2", "--model.unroll.length", "2", "--data.batches_per_step", "2",
        "--model.init_args.trajectories", "1", "--trainer.limit_val_batches", "0"]
TEST = ["--model.evaluation.test_n_iters", "3", "--model.evaluation.tasks", "1",
        "--trainer.limit_test_batches", "1"]


def test_meta_tests_of_one_optimizee_log_apart_by_optimizer(run_cli, tmp_path):
    for optimizer in ("adam", "sgd"):
        run_cli("fit", "-c", "configs/meta_test/bn_relu.yaml", "-c", f"configs/optimizers/{optimizer}.yaml",
                "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0")
    runs = tmp_path / "logs" / "meta_test" / "bn_relu"
    logged = sorted(str(p.relative_to(runs)) for p in runs.glob("*/version_*"))
    assert logged == ["adam/version_0", "sgd/version_0"]


@pytest.mark.parametrize("ckpt_path", ["file", "last"])
def test_testing_a_meta_training_checkpoint_logs_inside_its_run(run_cli, tmp_path, ckpt_path):
    run_cli("fit", "-c", "configs/meta_train/leaky_relu.yaml", *TINY)
    run = tmp_path / "logs" / "meta_train" / "leaky_relu" / "version_0"
    trained_config = (run / "config.yaml").read_bytes()
    checkpoint = str(run / "checkpoints" / "last.ckpt") if ckpt_path == "file" else "last"
    run_cli("test", "-c", "configs/meta_train/leaky_relu.yaml", *TINY, *TEST, "--ckpt_path", checkpoint)
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # no version_1 beside it
    assert (run / "config.yaml").read_bytes() == trained_config
    tested = run / "test" / "last" / "version_0"
    assert len(read_scalars(tested)["test/loss_curve"]) == 3
    evaluation = yaml.safe_load((tested / "config.yaml").read_text())["model"]["init_args"]["evaluation"]
    assert evaluation["test_n_iters"] == 3
    # testing it again, longer, logs apart: nothing of the first test is overwritten or dropped
    run_cli("test", "-c", "configs/meta_train/leaky_relu.yaml", *TINY, *TEST, "--ckpt_path", checkpoint,
            "--model.evaluation.test_n_iters", "4")
    assert len(read_scalars(tested)["test/loss_curve"]) == 3
    assert len(read_scalars(run / "test" / "last" / "version_1")["test/loss_curve"]) == 4


def test_testing_last_without_a_run_names_where_it_looked(run_cli, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("test", "-c", "configs/meta_train/leaky_relu.yaml", *TEST, "--ckpt_path", "last")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    runs = tmp_path / "logs" / "meta_train" / "leaky_relu"
    assert f"`--ckpt_path last` finds no run of this config under '{runs}'" in err


@pytest.mark.parametrize("model", [
    {"class_path": "l2o_lightning.optimizee_module.OptimizeeModule",
     "init_args": {"hidden": [20], "activation": "relu", "batchnorm": True}},
    {"class_path": "l2o_lightning.meta.MetaTrainModule",  # the MLP is an object: model.optimizee
     "init_args": {"optimizee": {"class_path": "l2o_lightning.optimizees.MLP",
                                 "init_args": {"hidden": [20], "activation": "relu", "batchnorm": True}}}},
], ids=["meta_test", "meta_train"])
def test_the_optimizee_placeholder_names_the_mlp_wherever_the_model_takes_it(model):
    config = {"model": model, "trainer": {"logger": {"init_args": {"name": "{optimizee}/runs"}}}}
    _fill_run_name(config)
    assert config["trainer"]["logger"]["init_args"]["name"] == "bn_relu/runs"
