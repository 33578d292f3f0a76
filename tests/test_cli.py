"""The ``l2o`` CLI on real MNIST: every optimizer config trains, bad input fails cleanly."""

import re
import statistics
import subprocess
import sys

import pytest
from conftest import REPO

from l2o_lightning.tb import read_scalars

pytestmark = pytest.mark.slow  # real training runs

OPTIMIZER_CONFIGS = ["sgd", "adam", "lion", "lion_sgd"]


@pytest.mark.parametrize("optimizer", OPTIMIZER_CONFIGS)
def test_each_optimizer_config_lowers_the_train_loss(run_cli, tmp_path, optimizer):
    run_cli("fit", "-c", "configs/meta_test/leaky_relu.yaml", "-c", f"configs/optimizers/{optimizer}.yaml",
            "--trainer.max_steps", "100", "--trainer.val_check_interval", "50")
    (run_dir,) = (tmp_path / "logs" / "meta_test" / "leaky_relu" / optimizer.replace("_", "")).iterdir()
    scalars = read_scalars(run_dir)
    losses = [value for _, value in scalars["train/loss"]]
    assert len(losses) == 100
    assert statistics.mean(losses[-10:]) < 0.6 * statistics.mean(losses[:3])
    assert [step for step, _ in scalars["test/acc"]] == [49, 99]
    assert scalars["test/acc"][-1][1] > 0.7
    assert (run_dir / "config.yaml").exists()


def test_bn_and_sigmoid_optimizees_train(run_cli, tmp_path):
    for name in ("bn_relu", "sigmoid"):
        run_cli("fit", "-c", f"configs/meta_test/{name}.yaml", "-c", "configs/optimizers/adam.yaml",
                "--trainer.max_steps", "30", "--trainer.val_check_interval", "30")
        (run_dir,) = (tmp_path / "logs" / "meta_test" / name / "adam").iterdir()
        losses = [value for _, value in read_scalars(run_dir)["train/loss"]]
        assert losses[-1] < losses[0]


def _fails_with(run_cli, capsys, args, match):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "-c", "configs/meta_test/leaky_relu.yaml", *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(match, err, flags=re.DOTALL), err


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--model.init_args.activation", "tanh"],
         r"unknown activation 'tanh'.*model.activation.*leaky_relu"),
        (["--model.init_args.hidden", "[20, 0]"], r"invalid hidden sizes.*model.hidden.*positive"),
        (["--optimizer", "torch.optim.Nope"], r"optimizer.*torch.optim.Nope.*--help"),
        (["--trainer.max_stepz", "5"], r"`trainer.max_stepz` \(on the command line\) is not a setting"),
        (["--model.init_args.activaton", "relu"], r"`model.init_args.activaton`.*mean `activation`\?"),
    ],
)
def test_bad_settings_end_in_one_clean_message(run_cli_no_data, capsys, args, match):
    _fails_with(run_cli_no_data, capsys, args, match)


def test_no_optimizer_names_the_optimizer_configs(run_cli, capsys):
    _fails_with(run_cli, capsys, [], r"no optimizer configured.*configs/optimizers/adam.yaml")


def test_a_shipped_config_named_elsewhere_points_to_the_repository(
    run_cli_no_data, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # configs/meta_test/leaky_relu.yaml is not here
    _fails_with(run_cli_no_data, capsys, [], rf"File does not exist.*lie in {REPO}: run l2o there, or pass "
                                     rf"{REPO / 'configs/meta_test/leaky_relu.yaml'}")


def test_missing_data_offline_names_the_root_and_both_settings(run_cli_no_data, capsys, tmp_path):
    empty = tmp_path / "no_mnist_here"
    _fails_with(run_cli_no_data, capsys, ["-c", "configs/optimizers/sgd.yaml", "--data.data_dir", str(empty),
                                  "--data.download", "false"],
                rf"MNIST not found under '{empty}'.*data.data_dir.*L2O_DATA_DIR")


def test_console_script_exits_nonzero_without_traceback(mnist_dir):
    result = subprocess.run(
        [sys.executable, "-m", "l2o_lightning.cli", "fit", "-c", "configs/meta_test/leaky_relu.yaml",
         "--model.init_args.activation", "swish"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "unknown activation 'swish'" in result.stderr


def test_diverging_optimizer_stops_naming_step_and_optimizer_and_keeps_logs(run_cli, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "-c", "configs/meta_test/leaky_relu.yaml", "-c", "configs/optimizers/sgd.yaml",
                "--optimizer.lr", "1e4")
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    step = int(re.search(r"diverged: train loss is \S+ at step (\d+) with optimizer SGD", err).group(1))
    (run_dir,) = (tmp_path / "logs" / "meta_test" / "leaky_relu" / "sgd").iterdir()
    logged_steps = [s for s, _ in read_scalars(run_dir)["train/loss"]]
    assert logged_steps == list(range(step))


def test_same_seed_same_losses_other_seed_other_losses(run_cli, tmp_path):
    def losses(seed, version):
        run_cli("fit", "-c", "configs/meta_test/bn_relu.yaml", "-c", "configs/optimizers/lion.yaml",
                "--trainer.max_steps", "40", "--trainer.val_check_interval", "40",
                "--seed_everything", str(seed), "--trainer.logger.init_args.version", version)
        run_dir = tmp_path / "logs" / "meta_test" / "bn_relu" / "lion" / version
        return [value for _, value in read_scalars(run_dir)["train/loss"]]

    first = losses(7, "a")
    assert losses(7, "b") == first
    assert losses(8, "c") != first
