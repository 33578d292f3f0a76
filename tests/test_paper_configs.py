"""configs/paper/: every experiment runs, and the composed settings are the paper's
(PAPER-SETTINGS.md), read back from the resolved config each run saves."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO

from l2o_lightning.tb import read_scalars

pytestmark = pytest.mark.slow  # real training runs

PAPER = REPO / "configs" / "paper"
EXPERIMENTS = sorted(p for p in PAPER.glob("*/*.yaml") if p.parent.name not in ("base", "meta_train"))
META_TRAININGS = sorted((PAPER / "meta_train").glob("*.yaml"))
SHORT_TEST = ["--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
              "--trainer.limit_val_batches", "1"]
SHORT_TRAIN = ["--model.unroll.n_iters", "4", "--model.unroll.length", "2",
               "--model.init_args.trajectories", "2", "--model.init_args.epoch_trajectories", "1",
               "--model.evaluation.val_n_iters", "2", "--model.evaluation.tasks", "1",
               "--data.batches_per_step", "2", "--data.restart_every", "4",
               "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "1"]
LRS = {("leaky_relu", "sgd"): 0.1, ("leaky_relu", "adam"): 0.01, ("leaky_relu", "lion"): 0.005,
       ("bn_relu", "sgd"): 0.1, ("bn_relu", "adam"): 0.05, ("bn_relu", "lion"): 0.01,
       ("sigmoid", "sgd"): 0.5, ("sigmoid", "adam"): 0.05, ("sigmoid", "lion"): 0.01,
       ("sigmoid_100_100", "sgd"): 0.5, ("sigmoid_100_100", "lion"): 0.005}


def saved_config(logs: Path) -> dict:
    (path,) = logs.glob("**/config.yaml")
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def tiny_l2o(mnist_dir, tmp_path_factory) -> Path:
    """``last.ckpt`` of a tiny real paper-recipe meta-training."""
    from l2o_lightning.cli import main

    logs = tmp_path_factory.mktemp("meta")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        patch.setattr("sys.argv", ["l2o"])
        main(["fit", "-c", "configs/paper/meta_train/leaky_relu.yaml", *SHORT_TRAIN,
              "--trainer.logger.init_args.save_dir", str(logs), "--trainer.enable_progress_bar", "false"])
    (checkpoint,) = logs.glob("**/last.ckpt")
    return checkpoint


@pytest.mark.parametrize("config", EXPERIMENTS, ids=[str(p.relative_to(PAPER)) for p in EXPERIMENTS])
def test_every_paper_experiment_runs_with_the_papers_settings(config, run_cli, tiny_l2o, tmp_path):
    optimizee, optimizer = config.parent.name, config.stem
    extra = ["--optimizer.init_args.checkpoint", str(tiny_l2o)] if optimizer.startswith("l2o") else []
    run_cli("fit", "-c", str(config.relative_to(REPO)), *SHORT_TEST, *extra)
    (run_dir,) = (tmp_path / "logs" / "paper" / optimizee).glob(f"{optimizer}/version_0")
    scalars = read_scalars(run_dir)
    assert len(scalars["train/loss"]) == 3 and "test/acc" in scalars
    assert {"symmetry/translation/update/abs_sum", "tail_index/update", "covariance/top_eig"} <= set(scalars)
    saved = saved_config(tmp_path / "logs")
    assert saved["data"]["normalize"] is False and saved["data"]["order"] == "loader"
    assert saved["data"]["seed"] == 0 and saved["data"]["batch_size"] == 128
    probes = {c["class_path"].rsplit(".", 1)[-1]: c["init_args"] for c in saved["trainer"]["callbacks"]}
    assert probes["TailIndexProbe"]["num_units"] == "all" and probes["CovarianceProbe"]["num_units"] == 93
    assert probes["TailIndexProbe"]["reference"] == probes["CovarianceProbe"]["reference"] == "mean_update"
    assert saved["trainer"]["max_steps"] == 3  # the override; the file's own budget below
    if (optimizee, optimizer) in LRS:
        assert saved["optimizer"]["init_args"]["lr"] == LRS[optimizee, optimizer]
    if optimizer == "sgd":
        assert saved["optimizer"]["init_args"]["momentum"] == 0.9
    assert saved["model"]["init_args"].get("track_running_stats", False) == (optimizee == "bn_relu")


@pytest.mark.parametrize("config", META_TRAININGS, ids=[p.stem for p in META_TRAININGS])
def test_every_paper_meta_training_runs_the_papers_recipe(config, run_cli, tmp_path):
    run_cli("fit", "-c", str(config.relative_to(REPO)), *SHORT_TRAIN)
    (run_dir,) = (tmp_path / "logs" / "paper" / "meta_train").glob(f"{config.stem}/version_0")
    scalars = read_scalars(run_dir)
    assert len(scalars["meta/loss"]) == 4 and len(scalars["meta/epoch_loss"]) == 2
    saved = saved_config(tmp_path / "logs")
    recipe = yaml.safe_load(config.read_text())["model"]["init_args"]
    model = saved["model"]["init_args"]
    assert model["meta_loss"] == "log_sum" and recipe["trajectories"] == 1000
    net = model["net"]["init_args"]
    lstm = (net["hidden_size"], net["num_layers"], net["preproc_p"], net["out_mult"])
    assert lstm == (20, 2, 10.0, 0.1)
    assert saved["optimizer"]["class_path"] == "torch.optim.Adam"
    assert saved["optimizer"]["init_args"]["lr"] == 1e-3
    assert (saved["data"]["normalize"], saved["data"]["order"], saved["data"]["seed"]) == (False, "loader", 0)
    if "reg" in config.stem:
        assert model["symmetry_reg"] == {"beta": float(config.stem.rsplit("_", 1)[1]), "kinds": ["rescale"],
                                         "form": "abs_sum"}
        assert "meta/symmetry_penalty" in scalars
