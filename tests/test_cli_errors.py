"""Careless input ends in one paragraph naming the setting (exit 2), never in a traceback: an
empty ``--ckpt_path``, an unwritable log folder, a misspelt or abbreviated key, an optimizer
refusing its settings, MNIST files missing; and a data root that is only read is not written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from torchvision.datasets import MNIST

from l2o_lightning import data
from l2o_lightning.cli import main

SGD = ["-c", "configs/optimizers/sgd.yaml"]


def fails_with(run_cli, capsys, *args: str, config: str = "configs/meta_test/leaky_relu.yaml") -> str:
    """The one error line of an ``l2o fit`` that must exit with code 2."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "-c", config, *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("l2o: error:")]
    return line


def test_an_empty_ckpt_path_names_the_setting(run_cli_no_data, capsys):
    line = fails_with(run_cli_no_data, capsys, *SGD, "--ckpt_path", "",
                      config="configs/meta_train/leaky_relu.yaml")
    assert "`ckpt_path` is empty (an unset shell variable?)" in line and "`last`" in line


def test_a_log_folder_under_a_file_names_the_setting_and_creates_nothing(run_cli_no_data, capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    # run_cli's own save_dir comes last: give the blocked one through a config file
    config = tmp_path / "logger.yaml"
    config.write_text(f"trainer:\n  logger:\n    init_args:\n      save_dir: {blocker / 'logs'}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", "configs/meta_test/leaky_relu.yaml", *SGD, "-c", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(rf"cannot write its logs and checkpoints to '{blocker}/logs/meta_test/.*' \(setting "
                     rf"`trainer.logger.init_args.save_dir`\): '{blocker}' is a file, not a folder", err), err
    assert blocker.read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "logger.yaml"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_log_folder_without_permission_names_the_setting(run_cli_no_data, capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    config = tmp_path / "logger.yaml"
    config.write_text(f"trainer:\n  logger:\n    init_args:\n      save_dir: {locked / 'logs'}\n")
    with pytest.raises(SystemExit):
        main(["fit", "-c", "configs/meta_test/leaky_relu.yaml", *SGD, "-c", str(config)])
    assert f"'{locked}' is not writable" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.init_args.hiden", "[30]"],
         "`model.init_args.hiden` (on the command line) is not a setting of "
         "l2o_lightning.optimizee_module.OptimizeeModule; did you mean `hidden`? Its settings: hidden, "
         "activation, batchnorm, track_running_stats."),
        (["--optimizer.lrr", "0.1"],
         "`optimizer.init_args.lrr` (on the command line) is not a setting of torch.optim.SGD; did you "
         "mean `lr`?"),
        (["--trainer.max_step", "20"],  # a prefix of trainer.max_steps: never taken for it
         "`trainer.max_step` (on the command line) is not a setting of `l2o fit`; did you mean "
         "`trainer.max_steps`?"),
        (["--data.batch_sizee", "3"], "did you mean `data.batch_size`?"),
    ],
)
def test_a_misspelt_key_is_named_with_the_closest_valid_one(run_cli_no_data, capsys, args, expected):
    assert expected in fails_with(run_cli_no_data, capsys, *SGD, *args)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("model:\n  init_args:\n    hiden: [30]\n",
         "`model.init_args.hiden` (in {file}) is not a setting of "
         "l2o_lightning.optimizee_module.OptimizeeModule; did you mean `hidden`?"),
        ("optimizer:\n  init_args:\n    lrr: 0.1\n",
         "`optimizer.init_args.lrr` (in {file}) is not a setting of torch.optim.SGD; did you mean `lr`?"),
        ("trainer:\n  max_stepz: 3\n",
         "`trainer.max_stepz` (in {file}) is not a setting of `l2o fit`; did you mean `trainer.max_steps`?"),
    ],
)
def test_a_misspelt_key_in_a_config_file_names_the_file(run_cli_no_data, capsys, tmp_path, content, expected):
    file = tmp_path / "mine.yaml"
    file.write_text(content)
    assert expected.format(file=file) in fails_with(run_cli_no_data, capsys, *SGD, "-c", str(file))


def test_a_negative_learning_rate_names_the_setting(run_cli, capsys):
    line = fails_with(run_cli, capsys, *SGD, "--optimizer.lr", "-0.1")
    assert ("the optimizer torch.optim.SGD refuses its settings (Invalid learning rate: -0.1): "
            "`optimizer.lr` = -0.1; fix it with `--optimizer.lr VALUE`") in line


def test_an_optimizer_refusing_without_a_reason_shows_its_settings(run_cli, capsys):
    line = fails_with(run_cli, capsys, "-c", "configs/optimizers/lion.yaml", "--optimizer.lr", "-1")
    expected = "the optimizer lion_pytorch.Lion refuses its settings (AssertionError): `optimizer.lr` = -1.0"
    assert expected in line


def test_partial_data_names_the_missing_files(run_cli, capsys, tmp_path, mnist_dir):
    raw = tmp_path / "partial" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (raw / name).symlink_to(mnist_dir / "MNIST" / "raw" / name)
    line = fails_with(run_cli, capsys, *SGD, "--data.data_dir", str(tmp_path / "partial"),
                      "--data.download", "false")
    assert ("it holds not all of the four IDX files in MNIST/raw/ (missing: t10k-labels-idx1-ubyte) and "
            "downloading is off (`data.download` false)") in line


def test_the_files_own_folder_as_root_points_to_the_root_and_downloads_nothing(
    run_cli, capsys, mnist_dir, monkeypatch
):
    def download(self) -> None:
        raise AssertionError("a second copy of MNIST would be downloaded inside the first")

    monkeypatch.setattr(MNIST, "download", download)
    raw = mnist_dir / "MNIST" / "raw"
    before = sorted(p.name for p in raw.iterdir())
    line = fails_with(run_cli, capsys, *SGD, "--data.data_dir", str(raw))
    assert f"'{raw}' holds the IDX files itself: the data root is '{mnist_dir}'" in line
    assert sorted(p.name for p in raw.iterdir()) == before


def test_a_failed_download_creates_nothing_under_the_root(run_cli, capsys, tmp_path, monkeypatch):
    def offline(self) -> None:  # as torchvision's download without a network: folders first, then the error
        Path(self.raw_folder).mkdir(parents=True)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(MNIST, "download", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    line = fails_with(run_cli, capsys, *SGD, "--data.data_dir", str(empty))
    assert f"MNIST not found under '{empty}': it holds none of the four IDX files" in line
    assert "could not be downloaded (Error downloading train-images-idx3-ubyte.gz: no network)" in line
    assert list(empty.iterdir()) == []
    fails_with(run_cli, capsys, *SGD, "--data.data_dir", str(tmp_path / "not_there"))
    assert not (tmp_path / "not_there").exists()


def test_a_download_moves_the_files_into_the_root(tmp_path, monkeypatch, mnist_dir):
    def download(self) -> None:  # a download that succeeds: the four files under the temporary root
        Path(self.raw_folder).mkdir(parents=True)
        for name in data.MNIST_FILES:
            (Path(self.raw_folder) / name).symlink_to(mnist_dir / "MNIST" / "raw" / name)

    monkeypatch.setattr(MNIST, "download", download)
    x, y = data.load_mnist(tmp_path / "new", False)
    assert sorted(p.name for p in (tmp_path / "new" / "MNIST" / "raw").iterdir()) == sorted(data.MNIST_FILES)
    assert x.shape == (10000, 784) and y.shape == (10000,)
