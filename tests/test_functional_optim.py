"""The functional optimizers take the steps of torch's and lion-pytorch's optimizers."""

import subprocess
import sys

import pytest
import torch
from lion_pytorch import Lion

from l2o_lightning.dynamics import functional_optim as F
from l2o_lightning.learned import LSTMOptimizerNet
from l2o_lightning.optimizees import MLP
from l2o_lightning.unroll import Trajectory, meta_objective, unroll_truncation

STEPS = 10
# (torch optimizer, its arguments, the functional optimizer that should step alike)
REFERENCES = {
    "sgd": (torch.optim.SGD, dict(lr=0.1), F.SGD(lr=0.1)),
    "sgd_momentum": (torch.optim.SGD, dict(lr=0.1, momentum=0.9), F.SGD(lr=0.1, momentum=0.9)),
    "sgd_dampening_wd": (
        torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01),
        F.SGD(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01),
    ),
    "sgd_nesterov_maximize": (
        torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True),
        F.SGD(lr=0.1, momentum=0.9, nesterov=True, maximize=True),
    ),
    "adam": (torch.optim.Adam, dict(lr=1e-2), F.Adam(lr=1e-2)),
    "adam_wd_amsgrad": (
        torch.optim.Adam, dict(lr=1e-2, weight_decay=0.1, amsgrad=True),
        F.Adam(lr=1e-2, weight_decay=0.1, amsgrad=True),
    ),
    "adamw": (
        torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1),
        F.Adam(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
    ),
    "lion": (Lion, dict(lr=1e-3), F.Lion(lr=1e-3)),
    "lion_wd": (Lion, dict(lr=1e-3, betas=(0.8, 0.95), weight_decay=0.1),
                F.Lion(lr=1e-3, betas=(0.8, 0.95), weight_decay=0.1)),
}


def loss(theta):
    """A smooth non-quadratic loss, so that gradients change along the trajectory."""
    return 0.5 * (theta - 0.5).square().sum() + 0.1 * torch.sin(2 * theta).sum()


def start():
    return torch.randn(6, 5, generator=torch.Generator().manual_seed(0))


def torch_trajectory(optimizer_class, kwargs):
    param = start().requires_grad_()
    optimizer = optimizer_class([param], **kwargs)
    points = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss(param).backward()
        optimizer.step()
        points.append(param.detach().clone())
    return torch.stack(points)


def functional_trajectory(optimizer, grads=None):
    """``STEPS`` steps on :func:`loss`, or with the given gradients ``[STEPS, *shape]``."""
    theta = start()
    state, points = optimizer.init(theta), []
    for step in range(STEPS):
        grad = torch.func.grad(loss)(theta) if grads is None else grads[step]
        update, state = optimizer.update(grad, state, theta)
        theta = theta + update
        points.append(theta)
    return torch.stack(points)


@pytest.mark.parametrize("name", REFERENCES)
def test_steps_equal_the_torch_optimizers(name):
    optimizer_class, kwargs, functional = REFERENCES[name]
    expected = torch_trajectory(optimizer_class, kwargs)
    torch.testing.assert_close(functional_trajectory(functional), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lion_weight", [0.0, 0.3, 1.0])
def test_lion_sgd_moves_by_the_weighted_moves_of_lion_and_sgd(lion_weight):
    """With the same gradients at every step, LionSGD's path from the start is the weighted sum
    of Lion's and SGD's: ``theta_t - theta_0 = w (Lion's) + (1 - w) (SGD's)``."""
    grads = torch.randn(STEPS, 6, 5, generator=torch.Generator().manual_seed(1))
    lion = F.Lion(lr=1e-3, weight_decay=0.0)
    sgd = F.SGD(lr=0.1, momentum=0.9)
    mixed = F.LionSGD(lr=1e-3, sgd_lr=0.1, lion_weight=lion_weight, momentum=0.9)
    theta_0 = start()
    moved = {name: functional_trajectory(opt, grads) - theta_0 for name, opt in
             dict(lion=lion, sgd=sgd, mixed=mixed).items()}
    expected = lion_weight * moved["lion"] + (1 - lion_weight) * moved["sgd"]
    torch.testing.assert_close(moved["mixed"], expected, rtol=1e-5, atol=1e-6)


ROW_OPTIMIZERS = {
    **{name: functional for name, (_, _, functional) in REFERENCES.items()},
    "lion_sgd": F.LionSGD(lion_weight=0.3, weight_decay=0.1),
    "l2o": "l2o",
}


@pytest.mark.parametrize("name", ROW_OPTIMIZERS)
def test_row_updates_are_each_rows_update_from_one_state(name):
    optimizer = ROW_OPTIMIZERS[name]
    if optimizer == "l2o":
        torch.manual_seed(0)  # a random LSTM: nonzero, state-dependent updates
        optimizer = F.L2O(LSTMOptimizerNet())
    gen = torch.Generator().manual_seed(2)
    theta = start()
    state = optimizer.init(theta)
    for _ in range(3):
        _, state = optimizer.update(torch.randn(6, 5, generator=gen), state, theta)
    grads = torch.randn(4, 6, 5, generator=gen)

    rows = optimizer.row_updates(grads, state, theta)

    each = torch.stack([optimizer.update(g, state, theta)[0] for g in grads])
    torch.testing.assert_close(rows, each, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(rows[0], rows[1])


@pytest.mark.parametrize("name", ["sgd_momentum", "adam_wd_amsgrad", "lion_wd"])
def test_a_torch_optimizers_state_reads_as_the_functional_state(name):
    """``state_from_entries(optimizer.state[p])`` continues a torch optimizer's trajectory."""
    optimizer_class, kwargs, functional = REFERENCES[name]
    param = start().requires_grad_()
    optimizer = optimizer_class([param], **kwargs)
    loss(param).backward()
    optimizer.step()
    state = F.state_from_entries(functional, optimizer.state[param], param.detach())
    grad = torch.func.grad(loss)(param.detach())
    update, next_state = functional.update(grad, state, param.detach())
    before = param.detach().clone()
    param.grad = grad.clone()
    optimizer.step()
    torch.testing.assert_close(before + update, param.detach(), rtol=1e-6, atol=1e-6)
    for key, value in F.state_entries(next_state).items():
        torch.testing.assert_close(value, optimizer.state[param][key], rtol=1e-6, atol=1e-7)


def test_the_math_layer_imports_no_glue():
    """``dynamics/`` (the functional optimizers and the probes' math) imports neither the
    ``torch.optim`` shells, the LightningModules nor Lightning."""
    modules = subprocess.run(
        [sys.executable, "-c", "import sys, l2o_lightning.dynamics; print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    glue = ("lightning", "pytorch_lightning", "l2o_lightning.optim", "l2o_lightning.meta",
            "l2o_lightning.optimizee_module", "l2o_lightning.callbacks")
    assert not [m for m in modules if any(m == g or m.startswith(f"{g}.") for g in glue)]


def test_the_unroll_meta_trains_a_functional_sgd():
    """``unroll_truncation`` steps any functional optimizer: SGD with momentum takes torch's steps on
    every task, and the meta-gradient reaches its learning rate (a tensor): with gradients held
    (first order), ``d/dlr sum_t L_t = sum_t <g_t, sum_{s<t} u_s> / lr``, mean over tasks."""
    torch.manual_seed(0)
    optimizee = MLP(hidden=[3], in_features=4, num_classes=3).double().requires_grad_(False)
    params = torch.stack([optimizee.sample_flat(torch.Generator().manual_seed(t)) for t in range(2)])
    xs, ys = torch.randn(4, 2, 5, 4, dtype=torch.float64), torch.randint(0, 3, (4, 2, 5))
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    sgd = F.SGD(lr=lr, momentum=0.9)
    seen = []

    def record(theta, grad, update, state):
        seen.append((grad, update.detach()))
        return update.new_zeros(())

    start = Trajectory(params, sgd.init(params))
    end, losses, _ = unroll_truncation(sgd, optimizee, start, xs, ys, record)

    for task in range(2):
        param = params[task].clone().requires_grad_()
        reference = torch.optim.SGD([param], lr=0.1, momentum=0.9)
        for x, y in zip(xs[:, task], ys[:, task], strict=True):
            reference.zero_grad()
            optimizee.functional_loss(param, x, y).backward()
            reference.step()
        torch.testing.assert_close(end.params[task].detach(), param.detach(), rtol=1e-12, atol=1e-14)
    (meta_grad,) = torch.autograd.grad(meta_objective(losses, "sum"), lr)
    moved = torch.cumsum(torch.stack([u for _, u in seen]), 0) - torch.stack([u for _, u in seen])
    expected = (torch.stack([g for g, _ in seen]) * moved).sum((0, 2)).mean() / lr.detach()
    torch.testing.assert_close(meta_grad, expected)
    assert end.params.grad_fn is not None and end.detach().params.grad_fn is None
