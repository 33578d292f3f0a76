"""Update rules == real optimizer steps, several steps in, without touching the optimizer."""

import copy

import pytest
import torch
from lion_pytorch import Lion

from l2o_lightning.checkpoints import CHECKPOINT_KEY, checkpoint_entry
from l2o_lightning.dynamics import update_rules
from l2o_lightning.dynamics.update_rules import flat_optimizer_params, stepped_updates, updates
from l2o_lightning.learned import LSTMOptimizerNet
from l2o_lightning.optim import L2O, LionSGD

OPTIMIZERS = {
    "sgd": (torch.optim.SGD, dict(lr=0.1)),
    "sgd_momentum_dampening_wd": (
        torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01)
    ),
    "sgd_nesterov_maximize": (
        torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True)
    ),
    "adam": (torch.optim.Adam, dict(lr=1e-2)),
    "adam_wd_amsgrad": (torch.optim.Adam, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    "adamw_amsgrad": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    "lion_wd": (Lion, dict(lr=1e-3, weight_decay=0.1)),
    "lion_decoupled_wd": (Lion, dict(lr=1e-3, weight_decay=1e-4, decoupled_weight_decay=True)),
    "lion_sgd": (LionSGD, dict(lion_weight=0.3, weight_decay=0.1)),
}


def make_optimizer(cls, kwargs):
    """Three float64 parameters in two param groups (the second with its own lr)."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
              for shape in [(3, 4), (5,), (2, 2)]]
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": kwargs.get("lr", 1e-3) * 3}]
    return cls(groups, **kwargs), params


def set_grads(params, flat):
    for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
        p.grad = g.view_as(p).clone()


def saved_state(optimizer):
    """A copy of the optimizer's state; an empty per-parameter entry means no state (a lookup
    in ``Optimizer.state``, a defaultdict, creates one)."""
    state = copy.deepcopy(optimizer.state_dict())
    state["state"] = {k: v for k, v in state["state"].items() if v}
    return state


def step(optimizer, params, flat_grad):
    set_grads(params, flat_grad)
    before = flat_optimizer_params(optimizer)
    optimizer.step()
    return flat_optimizer_params(optimizer) - before


@pytest.mark.parametrize("steps_before", [0, 3])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_update_rule_equals_the_real_step(name, steps_before):
    optimizer, params = make_optimizer(*OPTIMIZERS[name])
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps_before):
        step(optimizer, params, torch.randn(21, generator=gen, dtype=torch.float64))
    grads = torch.randn(4, 21, generator=gen, dtype=torch.float64)
    state = saved_state(optimizer)
    theta = flat_optimizer_params(optimizer)

    predicted = updates(optimizer, grads)  # [4, 21]

    assert predicted.shape == (4, 21)
    assert torch.equal(flat_optimizer_params(optimizer), theta)
    torch.testing.assert_close(saved_state(optimizer), state, rtol=0, atol=0)
    assert not torch.allclose(predicted[0], predicted[1])
    # every row equals a real step of a copy, and row 0 a real step of the optimizer itself
    torch.testing.assert_close(predicted, stepped_updates(optimizer, grads), rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(predicted[0], step(optimizer, params, grads[0]), rtol=1e-9, atol=1e-13)


def test_unknown_optimizer_falls_back_with_one_warning():
    optimizer, params = make_optimizer(torch.optim.RMSprop, dict(lr=1e-2, momentum=0.5))
    step(optimizer, params, torch.ones(21, dtype=torch.float64))
    grads = torch.randn(3, 21, dtype=torch.float64)
    update_rules._warn_fallback.cache_clear()
    with pytest.warns(UserWarning, match="no update rule for optimizer RMSprop"):
        predicted = updates(optimizer, grads)
    updates(optimizer, grads)  # no second warning (warnings are errors under -W error)
    torch.testing.assert_close(predicted[1], step(optimizer, params, grads[1]))


def test_gradient_rows_must_match_the_optimizer():
    optimizer, _ = make_optimizer(torch.optim.SGD, dict(lr=0.1))
    with pytest.raises(ValueError, match=r"must be \[N, 21\].*got \[3, 20\]"):
        updates(optimizer, torch.zeros(3, 20))


def l2o_arguments(tmp_path):
    """``L2O`` and its arguments: a random (not meta-trained) LSTM, with nonzero, state-dependent updates."""
    torch.manual_seed(0)
    torch.save({CHECKPOINT_KEY: checkpoint_entry(LSTMOptimizerNet())}, tmp_path / "l2o.ckpt")
    return L2O, dict(checkpoint=str(tmp_path / "l2o.ckpt"))


@pytest.mark.parametrize("steps_before", [0, 3])
def test_l2o_update_rule_equals_the_real_step(tmp_path, steps_before):
    optimizer, params = make_optimizer(*l2o_arguments(tmp_path))
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps_before):
        step(optimizer, params, torch.randn(21, generator=gen, dtype=torch.float64))
    grads = torch.randn(4, 21, generator=gen, dtype=torch.float64)
    state = saved_state(optimizer)

    predicted = updates(optimizer, grads)  # before any step: moves the float32 net to float64 as a step would

    torch.testing.assert_close(saved_state(optimizer), state, rtol=0, atol=0)
    assert not torch.allclose(predicted[0], predicted[1])
    torch.testing.assert_close(predicted, stepped_updates(optimizer, grads), rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(predicted[0], step(optimizer, params, grads[0]), rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("name", [*OPTIMIZERS, "l2o"])
def test_supported_optimizers_rules_copy_nothing(name, tmp_path, monkeypatch):
    """A supported optimizer's rule is its functional update over the state read in place: no
    deep copy of the optimizer or of its LSTM."""
    optimizer, params = make_optimizer(*(l2o_arguments(tmp_path) if name == "l2o" else OPTIMIZERS[name]))
    step(optimizer, params, torch.ones(21, dtype=torch.float64))

    def no_copy(*args, **kwargs):
        raise AssertionError("the update rule deep-copied something")

    monkeypatch.setattr(copy, "deepcopy", no_copy)
    assert updates(optimizer, torch.randn(3, 21, dtype=torch.float64)).shape == (3, 21)
