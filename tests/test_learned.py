"""The LSTM optimizer network and the L2O torch optimizer: invariants, not mocks."""

from __future__ import annotations

import math
import shutil
from functools import partial

import pytest
import torch
from torch import nn

from l2o_lightning.checkpoints import checkpoint_entry
from l2o_lightning.errors import ConfigError
from l2o_lightning.learned import (
    LSTMOptimizerNet,
    LSTMState,
    preprocess_gradients,
)
from l2o_lightning.lstm_kernels import lstm_network_step
from l2o_lightning.optim import L2O


def random_state(net: LSTMOptimizerNet, coords: tuple[int, ...], seed: int = 0) -> LSTMState:
    generator = torch.Generator().manual_seed(seed)
    shape = (net.num_layers, *coords, net.hidden_size)
    return LSTMState(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))


def reference_forward(net: LSTMOptimizerNet, grad: torch.Tensor, state: LSTMState):
    """The same network written with plain ``nn.LSTMCell`` calls, one row per coordinate."""
    x = preprocess_gradients(grad)
    h_out, c_out = [], []
    for layer, cell in enumerate(net.cells):
        x, c = cell(x, (state.h[layer], state.c[layer]))
        h_out.append(x)
        c_out.append(c)
    return net.out_mult * net.head(x).squeeze(-1), LSTMState(torch.stack(h_out), torch.stack(c_out))


def test_preprocessing_follows_the_paper():
    p = 10.0
    grad = torch.tensor([2.0, -3e-2, math.exp(-p), -1e-6, 0.0])
    features = preprocess_gradients(grad, p)
    assert features.shape == (5, 2)
    assert torch.allclose(features[0], torch.tensor([math.log(2.0) / p, 1.0]))
    assert torch.allclose(features[1], torch.tensor([math.log(3e-2) / p, -1.0]))
    assert torch.allclose(features[2], torch.tensor([-1.0, 1.0]))  # |g| = e^-p: still the log branch
    assert torch.allclose(features[3], torch.tensor([-1.0, -1e-6 * math.exp(p)]))
    assert torch.equal(features[4], torch.tensor([-1.0, 0.0]))


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_network_step_matches_lstmcells_and_passes_gradcheck(layers):
    """The hand-written backward of :class:`LSTMNetworkStep` against autograd's numerical
    gradients (float64) for every input: gradient features, states, cells' and head's weights."""
    torch.manual_seed(0)
    net = LSTMOptimizerNet(hidden_size=4, num_layers=layers).double()
    grad = torch.randn(6, dtype=torch.double) * 10.0 ** torch.randint(-5, 1, (6,))
    state = random_state(net, (6,))
    h, c = (t.double().requires_grad_() for t in (state.h, state.c))
    update, next_state = net(grad, LSTMState(h, c))
    ref_update, ref_state = reference_forward(net, grad, LSTMState(h, c))
    for ours, reference in ((update, ref_update), (next_state.h, ref_state.h), (next_state.c, ref_state.c)):
        assert torch.allclose(ours, reference, atol=1e-12)

    def outputs(*_):
        update, state = net(grad, LSTMState(h, c))
        return update, state.h, state.c

    assert torch.autograd.gradcheck(outputs, (h, c))
    assert torch.autograd.gradcheck(outputs, tuple(net.parameters()))
    x = preprocess_gradients(grad).requires_grad_()
    step = partial(lstm_network_step, cells=list(net.cells), head=net.head, out_mult=net.out_mult,
                   kernels=net.kernels)
    assert torch.autograd.gradcheck(lambda x: step(x, h, c), (x,))


def test_network_matches_plain_lstmcells():
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    grad = torch.randn(50) * 10.0 ** torch.randint(-7, 1, (50,))
    state = random_state(net, (50,))
    update, next_state = net(grad, state)
    ref_update, ref_state = reference_forward(net, grad, state)
    assert torch.allclose(update, ref_update, atol=1e-6)
    assert torch.allclose(next_state.h, ref_state.h, atol=1e-6)
    assert torch.allclose(next_state.c, ref_state.c, atol=1e-6)


@pytest.mark.parametrize("max_coords", [8, 50, 1 << 14])  # tiles of coordinates, of rows, one call
def test_updates_from_one_state_equal_one_forward_per_row(max_coords):
    torch.manual_seed(0)
    net = LSTMOptimizerNet().double()
    grads = torch.randn(5, 3, 7, dtype=torch.double) * 10.0 ** torch.randint(-7, 1, (5, 3, 7))
    state = random_state(net, (3, 7))
    state = LSTMState(state.h.double(), state.c.double())
    per_row = torch.stack([net(g, state)[0] for g in grads])
    shared = net.updates_from_one_state(grads, state, max_coords=max_coords)
    assert shared.shape == grads.shape
    torch.testing.assert_close(shared, per_row, rtol=1e-12, atol=1e-15)
    assert not torch.allclose(shared[0], shared[1])


def test_step_is_coordinatewise():
    """Permuting coordinates permutes the update and state; splitting them into tensors
    (or tasks) changes nothing."""
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    grad = torch.randn(40) * 1e-2
    state = random_state(net, (40,))
    update, next_state = net(grad, state)

    perm = torch.randperm(40)
    permuted_update, permuted_state = net(grad[perm], LSTMState(state.h[:, perm], state.c[:, perm]))
    assert torch.allclose(permuted_update, update[perm], atol=1e-6)
    assert torch.allclose(permuted_state.h, next_state.h[:, perm], atol=1e-6)

    first, second = net(grad[:15], LSTMState(state.h[:, :15], state.c[:, :15])), net(
        grad[15:], LSTMState(state.h[:, 15:], state.c[:, 15:])
    )
    assert torch.allclose(torch.cat([first[0], second[0]]), update, atol=1e-6)

    tasks_state = LSTMState(state.h.view(2, 4, 10, 20), state.c.view(2, 4, 10, 20))
    tasks_update, tasks_state = net(grad.view(4, 10), tasks_state)
    assert tasks_update.shape == (4, 10) and tasks_state.h.shape == (2, 4, 10, 20)
    assert torch.allclose(tasks_update.flatten(), update, atol=1e-6)


def test_initial_state_and_shape_errors():
    net = LSTMOptimizerNet(hidden_size=8, num_layers=3)
    state = net.initial_state((2, 5), dtype=torch.float64)
    assert state.h.shape == (3, 2, 5, 8) and state.h.dtype == torch.float64 and not state.c.any()
    with pytest.raises(ValueError, match=r"expected \(3, 7, 8\)"):
        net(torch.zeros(7), net.initial_state((6,)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(hidden_size=0), r"`hidden_size` .* positive integer, got 0"),
        (dict(hidden_size=-4), r"`hidden_size` .* got -4"),
        (dict(hidden_size=2.5), r"`hidden_size` .* got 2.5"),
        (dict(num_layers=0), r"`num_layers` .* positive integer, got 0"),
        (dict(num_layers=True), r"`num_layers` .* got True"),
        (dict(preproc_p=0.0), r"`preproc_p` .* positive and finite, got 0.0"),
        (dict(preproc_p=-10.0), r"`preproc_p` .* got -10.0"),
        (dict(preproc_p=math.inf), r"`preproc_p` .* got inf"),
    ],
)
def test_bad_network_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LSTMOptimizerNet(**kwargs)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")
def test_compiled_kernels_match_eager():
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    grad, state = torch.randn(300) * 1e-3, random_state(net, (300,))
    eager = net(grad, state)
    net.compile_kernels()
    compiled = net(grad, state)
    assert torch.allclose(compiled[0], eager[0], atol=1e-6)
    assert torch.allclose(compiled[1].c, eager[1].c, atol=1e-5)


# ---------------------------------------------------------------------------- L2O optimizer
@pytest.fixture
def l2o_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    path = tmp_path / "meta.ckpt"
    torch.save({"state_dict": {}, "l2o": checkpoint_entry(net)}, path)
    return path, net


def test_l2o_step_is_one_batched_lstm_call_over_all_parameters(l2o_checkpoint):
    path, net = l2o_checkpoint
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    params = list(model.parameters())
    optimizer = L2O([{"params": params[:2]}, {"params": params[2:]}], checkpoint=str(path))
    assert not optimizer.net.training
    assert not any(p.requires_grad for p in optimizer.net.parameters())
    assert torch.equal(optimizer.lstm_state().h, torch.zeros(2, 39, 20))

    state = net.initial_state((39,))
    for _ in range(3):
        before = torch.cat([p.detach().flatten() for p in params])
        optimizer.zero_grad()
        model(torch.randn(8, 5)).square().mean().backward()
        grad = torch.cat([p.grad.flatten() for p in params])
        with torch.no_grad():
            expected_update, state = net(grad, state)
        optimizer.step()
        after = torch.cat([p.detach().flatten() for p in params])
        assert torch.allclose(after - before, expected_update, atol=1e-6)
        assert torch.allclose(optimizer.lstm_state().h, state.h, atol=1e-6)


def test_l2o_state_dict_round_trip_continues_the_same_trajectory(l2o_checkpoint):
    path, _ = l2o_checkpoint

    def train(model, optimizer, steps, seed):
        generator = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            optimizer.zero_grad()
            model(torch.randn(8, 5, generator=generator)).square().mean().backward()
            optimizer.step()

    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    optimizer = L2O(model.parameters(), checkpoint=str(path))
    train(model, optimizer, 2, seed=0)
    clone = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    clone.load_state_dict(model.state_dict())
    restored = L2O(clone.parameters(), checkpoint=str(path))
    restored.load_state_dict(optimizer.state_dict())
    assert torch.equal(restored.lstm_state().c, optimizer.lstm_state().c)
    train(model, optimizer, 2, seed=1)
    train(clone, restored, 2, seed=1)
    for p, q in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_l2o_leaves_parameters_without_gradient_alone(l2o_checkpoint):
    path, _ = l2o_checkpoint
    used, unused = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    optimizer = L2O([used, unused], checkpoint=str(path), out_mult=0.5)
    assert optimizer.net.out_mult == 0.5
    used.sum().backward()
    optimizer.step()
    assert not torch.equal(used.detach(), torch.ones(3))
    assert torch.equal(unused.detach(), torch.ones(2))
    before = optimizer.state_dict()["state"].keys()
    state = optimizer.lstm_state()
    assert state.h.shape == (2, 5, 20)
    assert state.h[:, :3].abs().sum() > 0 and not state.h[:, 3:].any()
    assert optimizer.state_dict()["state"].keys() == before  # reading the state adds no entries


def test_l2o_checkpoint_errors_name_the_setting(tmp_path):
    params = [nn.Parameter(torch.zeros(2))]
    missing = r"'.*missing.ckpt' \(setting `optimizer.checkpoint`\) does not exist"
    with pytest.raises(ConfigError, match=missing):
        L2O(params, checkpoint=str(tmp_path / "missing.ckpt"))

    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ConfigError, match=r"`optimizer.checkpoint`\) cannot be read .* meta-training"):
        L2O(params, checkpoint=str(corrupt))

    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": nn.Linear(2, 2).state_dict()}, foreign)
    with pytest.raises(ConfigError, match=r"has no 'l2o' entry, so it is not a MetaTrainModule checkpoint"):
        L2O(params, checkpoint=str(foreign))

    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"l2o": checkpoint_entry(LSTMOptimizerNet()), "extra": nn.Linear(2, 2)}, unsafe)
    with pytest.raises(ConfigError, match=r"cannot be read"):
        L2O(params, checkpoint=str(unsafe))
