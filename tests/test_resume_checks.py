"""Resuming checks the checkpoint against the config before anything of the run is written:
another config's checkpoint or a changed setting ends in one paragraph naming the settings, and
a resume that fails later still leaves the run's saved ``config.yaml`` as it was."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO

from l2o_lightning.cli import main

pytestmark = pytest.mark.slow  # real training runs

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TINY = ["--model.unroll.n_iters", "2", "--model.unroll.length", "2", "--data.batches_per_step", "2",
        "--model.init_args.trajectories", "1", "--trainer.limit_val_batches", "0"]
HIDDEN_30 = ["--model.optimizee.hidden", "[30]"]


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory) -> Path:
    """The log folder of a finished one-trajectory meta-training on leaky_relu."""
    logs = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        patch.setattr("sys.argv", ["l2o"])
        main(["fit", "-c", "configs/meta_train/leaky_relu.yaml", *TINY,
              "--trainer.logger.init_args.save_dir", str(logs), *QUIET])
    return logs


@pytest.fixture
def logs(trained, tmp_path, monkeypatch) -> Path:
    """A copy of the trained run's logs for one test; the CLI runs from the repository."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["l2o"])
    return Path(shutil.copytree(trained, tmp_path / "logs"))


def fit(logs: Path, config: str, *args: str) -> None:
    main(["fit", "-c", config, *TINY, *args, "--trainer.logger.init_args.save_dir", str(logs), *QUIET])


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("l2o: error:")]
    return line


def test_another_configs_checkpoint_is_refused_naming_the_settings_that_differ(logs, capsys):
    run = logs / "meta_train" / "leaky_relu" / "version_0"
    with pytest.raises(SystemExit) as exit_info:
        fit(logs, "configs/meta_train/bn_relu.yaml", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    assert exit_info.value.code == 2
    line = error_line(capsys)
    assert "`model.optimizee.activation` is 'relu' here, 'leaky_relu' in the checkpoint" in line
    assert "`model.optimizee.batchnorm` is True here, False in the checkpoint" in line
    assert "hidden" not in line  # a setting both share is not named
    assert f"l2o fit -c {run / 'config.yaml'} --ckpt_path" in line
    assert not (logs / "meta_train" / "bn_relu").exists()  # nothing was written for the refused run


def test_the_suggested_command_resumes_the_run_in_place(logs, capsys):
    run = logs / "meta_train" / "leaky_relu" / "version_0"
    with pytest.raises(SystemExit):
        fit(logs, "configs/meta_train/bn_relu.yaml", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    command = re.search(r"run `l2o (fit .*?)`;", error_line(capsys)).group(1).split()
    main([*command, "--trainer.logger.init_args.save_dir", str(logs), *QUIET])
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
    # the run had spent its budget: resumed, it takes no further meta-step
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1


def test_a_changed_shape_on_resume_is_refused_and_the_saved_config_kept(logs, capsys):
    saved = logs / "meta_train" / "leaky_relu" / "version_0" / "config.yaml"
    before = saved.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        fit(logs, "configs/meta_train/leaky_relu.yaml", "--ckpt_path", "last", *HIDDEN_30)
    assert exit_info.value.code == 2
    assert "`model.optimizee.hidden` is [30] here, [20] in the checkpoint" in error_line(capsys)
    assert saved.read_bytes() == before


def test_a_resume_failing_while_restoring_leaves_the_saved_config_alone(logs):
    run = logs / "meta_train" / "leaky_relu" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    content = torch.load(last, weights_only=True)
    del content["hyper_parameters"], content["datamodule_hyper_parameters"]  # nothing to compare with
    torch.save(content, last)
    before = (run / "config.yaml").read_bytes()
    with pytest.raises(RuntimeError, match="size mismatch"):
        fit(logs, "configs/meta_train/leaky_relu.yaml", "--ckpt_path", "last", *HIDDEN_30)
    assert (run / "config.yaml").read_bytes() == before


def test_a_fresh_run_still_saves_its_config(logs):
    fit(logs, "configs/meta_train/bn_relu.yaml")
    saved = (logs / "meta_train" / "bn_relu" / "version_0" / "config.yaml").read_text()
    assert "activation: relu" in saved and "batchnorm: true" in saved
