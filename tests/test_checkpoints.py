"""Safe checkpoint loading: every read is ``weights_only=True``, and a missing, truncated,
corrupt, foreign (pickled objects), wrong-kind or version-mismatched file ends in one
paragraph naming the setting, both as ``optimizer.checkpoint`` (L2O) and as ``--ckpt_path``."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO

from l2o_lightning.cli import main
from l2o_lightning.errors import ConfigError
from l2o_lightning.optim import load_lstm_optimizer

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
META = "l2o_lightning.meta.MetaTrainModule"
OPTIMIZEE = "l2o_lightning.optimizee_module.OptimizeeModule"


@pytest.fixture(scope="module")
def checkpoints(mnist_dir, tmp_path_factory) -> dict[str, Path]:
    """A meta-training and a meta-testing (OptimizeeModule) checkpoint of tiny real runs."""
    logs = tmp_path_factory.mktemp("logs")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        patch.setattr("sys.argv", ["l2o"])
        logger = ["--trainer.logger.init_args.save_dir", str(logs), *QUIET]
        main(["fit", "-c", "configs/meta_train/leaky_relu.yaml", "--model.unroll.n_iters", "2",
              "--model.unroll.length", "2", "--data.batches_per_step", "2",
              "--model.init_args.trajectories", "1", "--trainer.limit_val_batches", "0", *logger])
        main(["fit", "-c", "configs/meta_test/leaky_relu.yaml", "-c", "configs/optimizers/sgd.yaml",
              "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
              "--trainer.enable_checkpointing", "true", "--trainer.callbacks",
              '[{"class_path": "ModelCheckpoint", "init_args": {"every_n_train_steps": 2}}]', *logger])
    (optimizee,) = (logs / "meta_test" / "leaky_relu" / "sgd").glob("version_0/checkpoints/*.ckpt")
    return {"meta": logs / "meta_train" / "leaky_relu" / "version_0" / "checkpoints" / "last.ckpt",
            "optimizee": optimizee}


def damaged(kind: str, checkpoints: dict[str, Path], folder: Path) -> Path:
    """A bad checkpoint file of the given kind."""
    path = folder / f"{kind}.ckpt"
    meta = checkpoints["meta"]
    if kind == "truncated":
        path.write_bytes(meta.read_bytes()[: meta.stat().st_size // 2])
    elif kind == "corrupt":
        path.write_bytes(b"\x80\x04not a checkpoint" * 64)
    elif kind == "pickled_object":  # loading it unsafely would construct an arbitrary object
        torch.save({"l2o": argparse.Namespace(x=1)}, path)
    elif kind == "version":
        content = torch.load(meta, weights_only=True)
        content["l2o"]["format_version"] = 99
        torch.save(content, path)
    elif kind == "wrong_kind":
        return checkpoints["optimizee"]
    return path  # "missing": never written


# what each bad file is reported as, read as an L2O and as --ckpt_path of a meta-training config
CASES = {
    "missing": ("does not exist", "does not exist"),
    "truncated": (r"cannot be read as a checkpoint of tensors and primitives \(RuntimeError: .*zip",) * 2,
    "corrupt": (r"cannot be read as a checkpoint of tensors and primitives \(UnpicklingError",) * 2,
    "pickled_object": (r"cannot be read .* \(UnpicklingError: .*argparse.Namespace",) * 2,
    "version": (r"has format version 99, this version of l2o_lightning reads 1",) * 2,
    "wrong_kind": (rf"has no 'l2o' entry, so it is not a MetaTrainModule checkpoint \(it was written by "
                   rf"{OPTIMIZEE}\)", rf"was written by {OPTIMIZEE}, but the model is {META}"),
}


@pytest.mark.parametrize("kind", CASES)
def test_bad_l2o_checkpoint_gives_one_paragraph_naming_the_setting(kind, checkpoints, tmp_path):
    with pytest.raises(ConfigError) as error:
        load_lstm_optimizer(damaged(kind, checkpoints, tmp_path))
    message = str(error.value)
    assert "(setting `optimizer.checkpoint`)" in message and "\n" not in message
    assert "weights_only=False" not in message  # never advise unsafe loading
    assert re.search(CASES[kind][0], message), message


@pytest.mark.parametrize("kind", CASES)
def test_bad_ckpt_path_exits_2_without_traceback(kind, checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["l2o"])
    path = damaged(kind, checkpoints, tmp_path)
    subcommand = "fit" if kind == "missing" else "test"
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "-c", "configs/meta_train/leaky_relu.yaml", "--ckpt_path", str(path),
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), *QUIET])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("l2o: error:")]
    assert re.search(CASES[kind][1], line), err
    assert "ckpt_path" in line


def test_a_good_checkpoint_loads_with_weights_only(checkpoints):
    content = torch.load(checkpoints["meta"], weights_only=True)
    assert {"l2o", "meta_training", "MNISTDataModule"} <= set(content)
    assert load_lstm_optimizer(checkpoints["meta"]).hidden_size == 20


def test_a_checkpoint_with_the_earlier_flat_model_settings_feeds_l2o_and_is_refused_as_ckpt_path(
    checkpoints, tmp_path, capsys, monkeypatch
):
    """Before ``model.optimizee``/``net``/``unroll``/``evaluation``, MetaTrainModule saved flat
    hyperparameters: its L2O entry still loads; resuming or testing it names what changed."""
    content = torch.load(checkpoints["meta"], weights_only=True)
    content["hyper_parameters"] = {"_class_path": META, "hidden": [20], "activation": "leaky_relu",
                                   "unroll": 2, "n_iters": 2, "tasks_per_step": 1, "out_mult": 0.1}
    path = tmp_path / "flat.ckpt"
    torch.save(content, path)
    assert load_lstm_optimizer(path).hidden_size == 20
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["l2o"])
    for subcommand in ("fit", "test"):
        with pytest.raises(SystemExit) as exit_info:
            main([subcommand, "-c", "configs/meta_train/leaky_relu.yaml", "--ckpt_path", str(path),
                  "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), *QUIET])
        assert exit_info.value.code == 2
        (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("l2o: error:")]
        assert "written by an earlier l2o_lightning whose MetaTrainModule took flat settings" in line
        assert "`--optimizer.checkpoint`" in line
