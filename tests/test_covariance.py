"""Update covariance through the M x M Gram matrix, and batched unit gradients."""


import torch

from l2o_lightning.dynamics.covariance import covariance_stats
from l2o_lightning.dynamics.per_sample import (
    coupled_sample_gradients,
    grouped_pool_gradients,
    pool_gradients,
    split_units,
    unit_gradients,
)
from l2o_lightning.optimizees import MLP


def test_gram_top_eigenvalue_and_trace_equal_the_dense_covariance():
    gen = torch.Generator().manual_seed(0)
    rows, reference = torch.randn(6, 40, generator=gen), torch.randn(40, generator=gen)
    c = (rows - reference).double()
    dense = c.T @ c / 6  # [D, D]
    stats = covariance_stats(rows, reference)
    torch.testing.assert_close(stats.top_eig.double(), torch.linalg.eigvalsh(dense)[-1])
    torch.testing.assert_close(stats.trace.double(), dense.trace())


def loop_gradients(model, flat, x, y):
    """Reference: one autograd call per unit."""
    rows = []
    for xu, yu in zip(x, y, strict=True):
        theta = flat.clone().requires_grad_()
        rows.append(torch.autograd.grad(model.functional_loss(theta, xu, yu), theta)[0])
    return torch.stack(rows)


def test_minibatch_unit_gradients_match_a_loop_with_and_without_batchnorm():
    torch.manual_seed(0)
    x, y = torch.randn(5, 16, 784), torch.randint(0, 10, (5, 16))
    for model in (MLP([8], "leaky_relu"), MLP([8, 6], "relu", batchnorm=True)):
        flat = model.flat_parameters()
        torch.testing.assert_close(pool_gradients(model, flat, x, y), loop_gradients(model, flat, x, y))


def test_single_samples_without_batchnorm_are_independent():
    torch.manual_seed(0)
    model = MLP([8], "sigmoid")
    x, y = torch.randn(7, 1, 784), torch.randint(0, 10, (7, 1))
    flat = model.flat_parameters()
    expected = loop_gradients(model, flat, x, y)
    torch.testing.assert_close(pool_gradients(model, flat, x, y), expected)
    torch.testing.assert_close(coupled_sample_gradients(model, flat, x[:, 0], y[:, 0]), expected)


def test_single_samples_with_batchnorm_are_jacobian_rows_of_the_pool_batch():
    torch.manual_seed(0)
    model = MLP([8], "relu", batchnorm=True)
    x, y = torch.randn(12, 1, 784), torch.randint(0, 10, (12, 1))
    flat = model.flat_parameters()
    rows = pool_gradients(model, flat, x, y)  # [12, D]
    batch = loop_gradients(model, flat, x[None, :, 0], y[None, :, 0])[0]  # gradient of the pool batch
    assert rows.shape == (12, model.layout.numel)
    torch.testing.assert_close(rows.mean(0), batch)
    theta = flat.clone().requires_grad_()
    logits = model.functional_logits(theta, x[:, 0])
    loss_3 = torch.nn.functional.cross_entropy(logits, y[:, 0], reduction="none")[3]  # sample 3 in the batch
    torch.testing.assert_close(rows[3], torch.autograd.grad(loss_3, theta)[0])


def test_a_ragged_last_unit_is_its_own_group_and_its_own_gradient(monkeypatch):
    torch.manual_seed(0)
    x, y = torch.randn(2 * 16 + 5, 784), torch.randint(0, 10, (2 * 16 + 5,))
    groups = split_units(x, y, 16)
    assert [tuple(g.shape) for g, _ in groups] == [(2, 16, 784), (1, 5, 784)]
    assert torch.equal(torch.cat([g.flatten(0, 1) for g, _ in groups]), x)  # consecutive rows, in order
    assert [tuple(g.shape) for g, _ in split_units(x[:32], y[:32], 16)] == [(2, 16, 784)]
    calls = []
    monkeypatch.setattr("l2o_lightning.dynamics.per_sample.unit_gradients",
                        lambda *args: calls.append(args[2].shape) or unit_gradients(*args))
    for model in (MLP([8], "leaky_relu"), MLP([8], "relu", batchnorm=True)):
        flat = model.flat_parameters()
        expected = torch.cat([
            loop_gradients(model, flat, x[:32].view(2, 16, 784), y[:32].view(2, 16)),
            loop_gradients(model, flat, x[None, 32:], y[None, 32:]),
        ])
        torch.testing.assert_close(grouped_pool_gradients(model, flat, groups), expected)
    assert calls == [(2, 16, 784), (1, 5, 784)] * 2  # one batched call per group


