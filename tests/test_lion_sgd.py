"""LionSGD interpolates exactly between torch's SGD and lion-pytorch's Lion."""

import pytest
import torch
from lion_pytorch import Lion

from l2o_lightning.errors import ConfigError
from l2o_lightning.optim import LionSGD


def _trajectory(make_optimizer, steps=5):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    optimizer = make_optimizer(model.parameters())
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    snapshots = []
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        snapshots.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))
    return torch.stack(snapshots)


def test_lion_weight_zero_is_sgd_with_momentum():
    ours = _trajectory(lambda p: LionSGD(p, lr=1e-3, sgd_lr=0.1, momentum=0.9, lion_weight=0.0))
    sgd = _trajectory(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    torch.testing.assert_close(ours, sgd)


def test_lion_weight_one_is_lion():
    kw = dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    ours = _trajectory(lambda p: LionSGD(p, sgd_lr=0.1, lion_weight=1.0, **kw))
    lion = _trajectory(lambda p: Lion(p, **kw))
    torch.testing.assert_close(ours, lion)


def test_half_weight_differs_from_both_ends():
    half = _trajectory(lambda p: LionSGD(p, lion_weight=0.5))
    assert not torch.allclose(half, _trajectory(lambda p: LionSGD(p, lion_weight=0.0)))
    assert not torch.allclose(half, _trajectory(lambda p: LionSGD(p, lion_weight=1.0)))


def test_lion_weight_outside_unit_interval_is_rejected():
    with pytest.raises(ConfigError, match=r"lion_weight.*\[0, 1\].*1.5"):
        LionSGD([torch.zeros(2, requires_grad=True)], lion_weight=1.5)
