"""Shipped learned optimizers (``pretrained:<name>``): every one loads safely by its short
name, was made at the paper's budget, and steps an optimizee; export and lookup errors."""

from __future__ import annotations

import pytest
import torch

from l2o_lightning import pretrained
from l2o_lightning.checkpoints import CHECKPOINT_KEY, checkpoint_entry
from l2o_lightning.errors import ConfigError
from l2o_lightning.learned import LSTMOptimizerNet
from l2o_lightning.optim import L2O
from l2o_lightning.optimizees import MLP

PAPER_META_STEPS = 10_000  # 1000 trajectories x 200 / 20


def test_optimizers_are_shipped():
    assert "leaky_relu" in pretrained.available()


@pytest.mark.parametrize("name", pretrained.available())
def test_every_shipped_optimizer_loads_by_name_and_takes_a_finite_step(name):
    content = torch.load(pretrained.resolve(f"pretrained:{name}"), map_location="cpu", weights_only=True)
    assert set(content) == {CHECKPOINT_KEY, pretrained.PROVENANCE_KEY}  # weights and provenance only
    provenance = content[pretrained.PROVENANCE_KEY]
    assert provenance["meta_steps"] == PAPER_META_STEPS and len(provenance["commit"]) == 40
    assert f"l2o fit -c configs/paper/meta_train/{name}.yaml" in provenance["command"]
    torch.manual_seed(0)
    model = MLP()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = L2O(model.parameters(), f"pretrained:{name}")
    torch.nn.functional.cross_entropy(model(torch.rand(128, 784)), torch.randint(0, 10, (128,))).backward()
    optimizer.step()
    moved = [(p - b).abs().max().item() for p, b in zip(model.parameters(), before, strict=True)]
    assert all(torch.isfinite(p).all() for p in model.parameters()) and max(moved) > 0


def test_export_keeps_the_network_and_its_provenance_only(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "FOLDER", tmp_path)
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    (tmp_path / "run").mkdir()
    best, last = tmp_path / "run" / "best-step4.ckpt", tmp_path / "run" / "last.ckpt"
    torch.save({CHECKPOINT_KEY: checkpoint_entry(net), "global_step": 4, "optimizer_states": [{"x": 1}],
                "meta_training": {"progress": {"rounds": 2, "diverged": 0}}}, best)
    torch.save({CHECKPOINT_KEY: checkpoint_entry(LSTMOptimizerNet()), "global_step": 7,
                "meta_training": {"progress": {"rounds": 4, "diverged": 1}}}, last)
    path = pretrained.export(best, "toy", "l2o fit -c x.yaml", "a" * 40)
    assert pretrained.available() == ["toy"] and pretrained.resolve("pretrained:toy") == path
    content = torch.load(path, weights_only=True)
    # the best epoch's network, the whole run's counts (from last.ckpt beside it)
    assert content[pretrained.PROVENANCE_KEY] == {
        "command": "l2o fit -c x.yaml", "commit": "a" * 40, "meta_steps": 7, "source": "best-step4.ckpt",
        "source_step": 4, "trajectories_started": 4, "diverged": 1}
    for key, value in net.state_dict().items():
        assert torch.equal(content[CHECKPOINT_KEY]["state_dict"][key], value)


def test_an_unknown_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match=r"no shipped learned optimizer .nope. .*checkpoint.*available"):
        pretrained.resolve("pretrained:nope")
    assert str(pretrained.resolve("some/file.ckpt")) == "some/file.ckpt"
