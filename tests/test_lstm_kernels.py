"""The LSTM's elementwise kernels: the C kernels compute the eager formulas (float32, to
rounding, checked against float64), the rest falls back to eager, and switching them off works."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from l2o_lightning.lstm_kernels import (
    EAGER_KERNELS,
    lstm_network_step,
    lstm_pointwise_backward,
    lstm_pointwise_forward,
    native_kernels,
    native_library,
    native_pointwise_backward,
    native_pointwise_forward,
)

needs_compiler = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)


def pointwise_inputs(rows: int, hidden: int, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(rows, 4 * hidden, generator=generator, dtype=dtype)
    c, grad_h, grad_c = (torch.randn(rows, hidden, generator=generator, dtype=dtype) for _ in range(3))
    return z, c, grad_h, grad_c


@needs_compiler
@pytest.mark.parametrize("hidden", [20, 3])  # 3: rows shorter than a vector register
def test_native_kernels_compute_the_eager_formulas_to_float32_rounding(hidden):
    assert native_library() is not None
    z, c, grad_h, grad_c = pointwise_inputs(257, hidden)
    exact_forward = lstm_pointwise_forward(z.double(), c.double())
    native_forward = native_pointwise_forward(z.clone(), c)
    for ours, exact in zip(native_forward, exact_forward, strict=True):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours.double(), exact, rtol=1e-5, atol=1e-6)
    s, tanh_c = exact_forward[2], exact_forward[3]
    exact_backward = lstm_pointwise_backward(grad_h.double(), grad_c.double(), s, c.double(), tanh_c)
    native_backward = native_pointwise_backward(grad_h, grad_c, s.float(), c, tanh_c.float())
    for ours, exact in zip(native_backward, exact_backward, strict=True):
        torch.testing.assert_close(ours.double(), exact, rtol=1e-5, atol=1e-6)


@needs_compiler
def test_network_step_with_c_kernels_equals_the_eager_one_with_gradients():
    torch.manual_seed(0)
    cells, head = [nn.LSTMCell(2, 20), nn.LSTMCell(20, 20)], nn.Linear(20, 1)
    x = torch.randn(500, 2, requires_grad=True)
    h, c = (torch.randn(2, 500, 20, requires_grad=True) for _ in range(2))
    parameters = [p for module in (*cells, head) for p in module.parameters()]
    results = {}
    for name, kernels in (("eager", EAGER_KERNELS), ("native", native_kernels())):
        update, h_next, c_next = lstm_network_step(x, h, c, cells, head, 0.1, kernels)
        loss = update.square().sum() + h_next.square().sum() + c_next.sin().sum()
        results[name] = [update, h_next, c_next, *torch.autograd.grad(loss, (x, h, c, *parameters))]
    for native, eager in zip(results["native"], results["eager"], strict=True):
        torch.testing.assert_close(native, eager, rtol=1e-5, atol=1e-5)


def test_tensors_the_c_kernels_do_not_take_go_to_the_eager_formulas():
    z, c, grad_h, grad_c = pointwise_inputs(7, 4, dtype=torch.float64)
    for ours, eager in zip(native_pointwise_forward(z.clone(), c), lstm_pointwise_forward(z, c), strict=True):
        assert torch.equal(ours, eager)
    z32, c32 = z.float()[None].expand(3, -1, -1).contiguous(), c.float()  # [k, n, 4h], c broadcast
    eager_forward = lstm_pointwise_forward(z32, c32)
    for ours, eager in zip(native_pointwise_forward(z32.clone(), c32), eager_forward, strict=True):
        assert torch.equal(ours, eager)
    s, tanh_c = lstm_pointwise_forward(z, c)[2:]
    backward = native_pointwise_backward(grad_h, grad_c, s, c, tanh_c)
    for ours, eager in zip(backward, lstm_pointwise_backward(grad_h, grad_c, s, c, tanh_c), strict=True):
        assert torch.equal(ours, eager)


@pytest.mark.parametrize(
    "environment", [{"L2O_NATIVE_KERNELS": "0"}, {"CC": "/nonexistent/cc"}], ids=["off", "no_compiler"]
)
def test_without_the_c_kernels_the_eager_ones_run(monkeypatch, environment):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    native_library.cache_clear()
    try:
        assert native_library() is None
        assert native_kernels() is EAGER_KERNELS
    finally:
        native_library.cache_clear()  # the next caller builds them again
