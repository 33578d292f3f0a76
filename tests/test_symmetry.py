"""Symmetry deviation: gradients and plain SGD satisfy every constraint to float precision,
Adam and Lion break them, and the vectorised formulas match a per-neuron loop."""


import pytest
import torch
from conftest import OPTIMIZEES
from lion_pytorch import Lion

from l2o_lightning.dynamics.symmetry import symmetry_deviations
from l2o_lightning.optimizees import MLP

KINDS = {
    "leaky_relu": {"rescale", "translation"},
    "relu": {"rescale", "translation"},
    "linear": {"rescale", "translation"},
    "sigmoid": {"translation"},
    "bn_relu": {"rescale", "scale", "translation"},
    "deep_bn_leaky": {"rescale", "scale", "translation"},
}


def make(name, seed=0):
    torch.manual_seed(seed)
    model = MLP(**OPTIMIZEES[name])
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    return model, x, y


def gradient(model, x, y):
    flat = model.flat_parameters().requires_grad_()
    (g,) = torch.autograd.grad(model.functional_loss(flat, x, y), flat)
    return flat.detach(), g


def step_update(model, x, y, optimizer, steps=3):
    """The update of the last of ``steps`` real steps, as a flat vector."""
    for _ in range(steps):
        before = model.flat_parameters()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return before, model.flat_parameters() - before


def deviations(model, v, theta):
    return symmetry_deviations(v, theta, model.symmetry_groups(), model.layout)


@pytest.mark.parametrize("name", OPTIMIZEES)
def test_gradient_satisfies_every_constraint(name):
    model, x, y = make(name)
    theta, g = gradient(model, x, y)
    devs = deviations(model, g, theta)
    assert set(devs) == KINDS[name]
    for kind, dev in devs.items():
        assert dev.normalized < 1e-5, (kind, dev)
        assert dev.sum_abs > 0 or kind == "scale"  # not trivially zero


@pytest.mark.parametrize("name", OPTIMIZEES)
def test_constraints_are_exact_in_float64_without_batchnorm_eps(name):
    """BatchNorm's eps (1e-5) breaks scale symmetry by ~eps / var: the float32 numbers above
    are ~1e-6 for scale. Without it, in float64, every deviation of the gradient vanishes."""
    model, x, y = make(name)
    for norm in model.norms:
        norm.eps = 1e-30
    theta, g = gradient(model.double(), x.double(), y)
    for kind, dev in deviations(model, g, theta).items():
        assert dev.normalized < 1e-12, (kind, dev)


@pytest.mark.parametrize("name", OPTIMIZEES)
def test_plain_sgd_update_satisfies_every_constraint(name):
    model, x, y = make(name)
    theta, u = step_update(model, x, y, torch.optim.SGD(model.parameters(), lr=0.1), steps=1)
    for kind, dev in deviations(model, -u, theta).items():
        assert dev.normalized < 1e-5, (kind, dev)


@pytest.mark.parametrize("name", ["leaky_relu", "bn_relu", "deep_bn_leaky"])
@pytest.mark.parametrize("optimizer", [torch.optim.Adam, Lion])
def test_adam_and_lion_updates_break_the_constraints(name, optimizer):
    model, x, y = make(name)
    theta, u = step_update(model, x, y, optimizer(model.parameters(), lr=1e-3))
    for kind, dev in deviations(model, -u, theta).items():
        assert dev.normalized > 1e-2, (kind, dev)


def reference_terms(model, v, theta):
    """Per-neuron ``d_j`` and ``||v_j|| ||theta_tilde_j||`` by an explicit loop, per kind."""
    vs, ts = model.layout.unflatten(v), model.layout.unflatten(theta)
    out = {}
    for group in model.symmetry_groups():
        if group.kind == "translation":
            w, b = group.incoming
            vectors = [(vs[w][:, i], torch.ones(10, dtype=v.dtype)) for i in range(ts[w].shape[1])]
            vectors.append((vs[b], torch.ones(10, dtype=v.dtype)))
        else:
            vectors = []
            for j in range(ts[group.incoming[0]].shape[0]):
                v_j = [vs[n][j].reshape(-1) for n in group.incoming]
                t_j = [ts[n][j].reshape(-1) for n in group.incoming]
                v_j += [vs[n][:, j] for n in group.outgoing]
                t_j += [-ts[n][:, j] for n in group.outgoing]
                vectors.append((torch.cat(v_j), torch.cat(t_j)))
        terms = [(vj @ tj, vj.norm() * tj.norm()) for vj, tj in vectors]
        out.setdefault(group.kind, []).extend(terms)
    return out


@pytest.mark.parametrize("name", ["leaky_relu", "deep_bn_leaky"])
def test_vectorised_deviation_matches_per_neuron_loop(name):
    model, _, _ = make(name)
    theta = model.flat_parameters().double()
    v = torch.randn_like(theta)
    devs = deviations(model, v, theta)
    for kind, terms in reference_terms(model, v, theta).items():
        d = torch.stack([t[0] for t in terms])
        weight = torch.stack([t[1] for t in terms])
        torch.testing.assert_close(devs[kind].abs_sum, d.sum().abs())
        torch.testing.assert_close(devs[kind].sum_abs, d.abs().sum())
        torch.testing.assert_close(devs[kind].normalized, d.abs().sum() / weight.sum())


def test_batched_rows_match_single_rows_and_sum_abs_is_differentiable():
    model, _, _ = make("deep_bn_leaky")
    theta = model.flat_parameters().double()
    v = torch.randn(3, len(theta), dtype=torch.float64, requires_grad=True)
    thetas = theta * torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)  # [3, D]
    batched = deviations(model, v, theta)
    batched_thetas = deviations(model, v, thetas)
    for i in range(3):
        single = deviations(model, v[i], theta)
        single_theta = deviations(model, v[i], thetas[i])
        for kind, dev in single.items():
            torch.testing.assert_close(batched[kind].normalized[i], dev.normalized)
            torch.testing.assert_close(batched_thetas[kind].sum_abs[i], single_theta[kind].sum_abs)
    # d sum_j |d_j| / dv = sum_j sign(d_j) theta_tilde_j, e.g. +W[j] on the scale rows
    (grad,) = torch.autograd.grad(batched["scale"].sum_abs.sum(), v)
    vs, ts = model.layout.unflatten(v.detach()), model.layout.unflatten(theta)
    w, b = "linears.0.weight", "linears.0.bias"
    d = (vs[w] * ts[w]).sum(-1) + vs[b] * ts[b]  # [3, 16]
    torch.testing.assert_close(model.layout.unflatten(grad)[w], d.sign()[..., None] * ts[w])


