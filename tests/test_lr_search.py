"""l2o-lr-search: the argmin of summed losses, the original study's data order and inits,
the CSV/markdown it writes, and its errors for bad settings."""

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from l2o_lightning.data import load_mnist
from l2o_lightning.errors import ConfigError
from l2o_lightning.lr_search import OPTIMIZEES, OPTIMIZERS, best_lr, main, parse_names, run_summed_loss
from l2o_lightning.optimizees import MLP


def test_best_lr_is_the_argmin_of_the_loss_summed_over_runs_and_skips_diverged_lrs():
    losses = {
        1e-3: [3.0, 3.0],  # sum 6
        1e-2: [2.0, 2.0],  # sum 4: the answer
        0.1: [0.1, 5.0],  # best single run, but sum 5.1
        0.5: [float("nan"), 0.1],  # smallest finite entry, diverged once
        1.0: [0.5, float("inf")],
    }
    assert best_lr(losses) == 1e-2
    assert best_lr({**losses, 1e-2: [2.0, 3.2]}) == 0.1
    assert best_lr({0.5: [1.0], 0.1: [1.0]}) == 0.1  # a tie goes to the smaller lr


def test_best_lr_without_an_eligible_lr_names_the_grid_option():
    with pytest.raises(ConfigError, match="--grid"):
        best_lr({0.5: [float("nan")], 3.0: [1.0, float("inf")]})


@pytest.mark.parametrize(("option", "value"), [("--optimizers", "sgd,rmsprop"), ("--optimizees", "relu")])
def test_unknown_name_is_a_config_error_naming_the_option(option, value, capsys):
    with pytest.raises(ConfigError, match=f"`{option}`.*{value.split(',')[-1]}"):
        parse_names(value, {"--optimizers": OPTIMIZERS, "--optimizees": OPTIMIZEES}[option], option)
    with pytest.raises(SystemExit) as stop:
        main([option, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"`{option}`" in err and value.split(",")[-1] in err


def test_non_positive_grid_is_a_config_error(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--grid", "0.1,-1"])
    assert stop.value.code == 2 and "`--grid`" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_replays_the_seed0_loader_from_raw_pixels_and_its_own_init(mnist_dir):
    x, y = load_mnist(mnist_dir, True, normalize=False)
    # the original study: a fresh seed-0 shuffling DataLoader per run, SGD with momentum 0.9
    loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    model = MLP([20], "leaky_relu")
    with torch.no_grad():
        start = model.sample_flat(torch.Generator().manual_seed(1))
        for param, value in zip(model.parameters(), model.layout.unflatten(start).values(), strict=True):
            param.copy_(value)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    expected = 0.0
    for _, (xb, yb) in zip(range(5), loader, strict=False):
        loss = F.cross_entropy(model(xb), yb)
        expected += loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()

    assert run_summed_loss("leaky_relu", "sgd", 0.1, 1, 5, x, y) == expected
    run0 = run_summed_loss("leaky_relu", "sgd", 0.1, 0, 5, x, y)
    assert abs(run0 - expected) > 1e-3  # run 0 starts elsewhere
    assert run_summed_loss("leaky_relu", "sgd", 0.1, 1, 5, x, y) == expected
    assert x.min() == 0 and x.max() == 1  # raw pixels


@pytest.mark.slow
def test_cli_writes_per_run_sums_their_mean_and_the_chosen_lr(mnist_dir, tmp_path, capsys):
    out = tmp_path / "paper" / "lr.csv"
    main(["--optimizers", "sgd,lion", "--optimizees", "leaky_relu", "--grid", "0.001,1e6", "--runs", "2",
          "--steps", "5", "--out", str(out), "--data-dir", str(mnist_dir)])
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["optimizee", "optimizer", "lr", "summed_loss_mean", "run0", "run1"]
    assert [(r["optimizer"], float(r["lr"])) for r in rows] == [
        ("sgd", 1e-3), ("sgd", 1e6), ("lion", 1e-3), ("lion", 1e6)]
    x, y = load_mnist(mnist_dir, True, normalize=False)
    for row in rows:
        sums = [float(row["run0"]), float(row["run1"])]
        assert sums[0] == run_summed_loss("leaky_relu", row["optimizer"], float(row["lr"]), 0, 5, x, y)
        if math.isfinite(sums[0]):
            assert sums[0] != sums[1]
            assert float(row["summed_loss_mean"]) == pytest.approx(sum(sums) / 2, rel=1e-12)
    sgd_diverged = rows[1]
    assert float(sgd_diverged["run0"]) == math.inf and float(sgd_diverged["summed_loss_mean"]) == math.inf
    # 5 steps at ~2.3 per step: a finite, undiverged sum
    assert 5 < float(rows[0]["summed_loss_mean"]) < 5 * 2.5

    table = out.with_suffix(".md").read_text()
    assert "| leaky_relu | sgd | 0.001 |" in table and "| leaky_relu | lion | 0.001 |" in table
    assert "--grid 0.001,1e6" in table and "commit " in table
    assert "| leaky_relu | sgd | 0.001 |" in capsys.readouterr().out
