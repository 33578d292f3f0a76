"""The coordinatewise LSTM optimizer of Andrychowicz et al. (2016), "Learning to learn by
gradient descent by gradient descent", https://arxiv.org/abs/1606.04474.

Every scalar parameter of the optimizee is one row of a batch: the network sees only that
coordinate's (preprocessed) gradient and its own hidden state, and proposes that
coordinate's update. All coordinates of all parameter tensors (and of several optimizees
at once) go through one batched call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor, nn

# the LSTMCell gate order (input, forget, cell candidate, output) along the 4*hidden axis
_GATES = 4


def preprocess_gradients(grad: Tensor, p: float = 10.0) -> Tensor:
    """The paper's gradient preprocessing (Andrychowicz et al. 2016, Appendix A).

    ``(log|g| / p, sign g)`` if ``|g| >= e^-p`` else ``(-1, e^p g)``.

    Args:
        grad: gradient of any shape ``[...]``.
        p: the scale parameter (paper: 10).

    Returns:
        ``[..., 2]``: magnitude and sign features per coordinate.

    >>> preprocess_gradients(torch.tensor([math.e**-5, -1.0, 0.0]), p=10.0)
    tensor([[-0.5000,  1.0000],
            [ 0.0000, -1.0000],
            [-1.0000,  0.0000]])
    """
    threshold = math.exp(-p)
    magnitude = grad.abs()
    large = magnitude >= threshold
    log_part = torch.where(large, magnitude.clamp_min(threshold).log() / p, -1.0)
    sign_part = torch.where(large, grad.sign(), grad * math.exp(p))
    return torch.stack((log_part, sign_part), dim=-1)


def lstm_pointwise_forward(z: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The elementwise part of an LSTM step.

    With pre-activations ``z = [z_i, z_f, 2 z_g, z_o]`` (``[..., 4H]``, the candidate's scaled
    by 2 so that one sigmoid serves all gates), ``c`` broadcastable to ``[..., H]``, and
    ``s = sigmoid(z)``:
    ``i, f, o = s_i, s_f, s_o``, ``g = tanh(z_g) = 2 s_g - 1``, ``c' = f c + i g``,
    ``h' = o tanh(c')`` with ``tanh(c') = 2 sigmoid(2 c') - 1`` (faster than ``torch.tanh``
    on CPU, equal within rounding).

    Returns:
        ``(h', c', s, tanh(c'))``; the last two are what the backward needs.
    """
    s = torch.sigmoid(z)
    i, f, s_g, o = s.chunk(_GATES, dim=-1)
    c_next = torch.addcmul(f * c, i, s_g, value=2).sub_(i)  # f c + i (2 s_g - 1)
    tanh_c = torch.sigmoid(2 * c_next).mul_(2).sub_(1)
    return o * tanh_c, c_next, s, tanh_c


def lstm_pointwise_backward(
    grad_h: Tensor, grad_c_next: Tensor, s: Tensor, c: Tensor, tanh_c: Tensor
) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`lstm_pointwise_forward` with respect to ``z`` and ``c``:
    ``dc' = grad_c' + grad_h' o (1 - tanh(c')^2)``;
    ``ds = [dc' g, dc' c, 2 dc' i, grad_h' tanh(c')]``; ``dz = ds s (1 - s)``; ``dc = dc' f``."""
    i, f, s_g, o = s.chunk(_GATES, dim=-1)
    grad_c = grad_c_next + torch.ops.aten.tanh_backward(grad_h * o, tanh_c)
    grad_s = torch.cat((grad_c * (2 * s_g - 1), grad_c * c, 2 * grad_c * i, grad_h * tanh_c), dim=-1)
    return torch.ops.aten.sigmoid_backward(grad_s, s), grad_c * f


@dataclass(frozen=True)
class PointwiseKernels:
    """How :class:`LSTMPointwise` runs its forward and backward: eagerly, or compiled."""

    forward: Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]] = lstm_pointwise_forward
    backward: Callable[..., tuple[Tensor, Tensor]] = lstm_pointwise_backward


EAGER_KERNELS = PointwiseKernels()


@cache
def compiled_kernels() -> PointwiseKernels:
    """The pointwise kernels through ``torch.compile``: one fused loop each instead of a
    dozen passes over memory (the same formulas, equal within float rounding)."""
    return PointwiseKernels(torch.compile(lstm_pointwise_forward), torch.compile(lstm_pointwise_backward))


class LSTMPointwise(torch.autograd.Function):
    """:func:`lstm_pointwise_forward` with :func:`lstm_pointwise_backward` as its gradient,
    which saves ``s, c, tanh(c')`` and nothing else per step."""

    @staticmethod
    def forward(ctx, z: Tensor, c: Tensor, kernels: PointwiseKernels) -> tuple[Tensor, Tensor]:
        h_next, c_next, s, tanh_c = kernels.forward(z, c)
        ctx.save_for_backward(s, c, tanh_c)
        ctx.kernels = kernels
        return h_next, c_next

    @staticmethod
    def backward(ctx, grad_h: Tensor, grad_c_next: Tensor) -> tuple[Tensor, Tensor, None]:
        return *ctx.kernels.backward(grad_h, grad_c_next, *ctx.saved_tensors), None


def gate_parameters(cell: nn.LSTMCell) -> tuple[Tensor, Tensor, Tensor]:
    """``(W_ih^T, W_hh^T, b_ih + b_hh)`` of the cell with the candidate gate's columns scaled
    by 2, so that ``z = x W_ih^T + h W_hh^T + b`` is what :func:`lstm_pointwise_forward` takes."""
    hidden = cell.hidden_size
    scale = torch.ones(_GATES * hidden, dtype=cell.weight_ih.dtype, device=cell.weight_ih.device)
    scale[2 * hidden : 3 * hidden] = 2.0
    bias = (cell.bias_ih + cell.bias_hh) * scale
    return (cell.weight_ih * scale[:, None]).t(), (cell.weight_hh * scale[:, None]).t(), bias


def lstm_cell(
    x: Tensor, h: Tensor, c: Tensor, cell: nn.LSTMCell, kernels: PointwiseKernels = EAGER_KERNELS
) -> tuple[Tensor, Tensor]:
    """One ``nn.LSTMCell`` step over a batch of rows, computed with fewer memory passes.

    ``[i, f, g, o] = x W_ih^T + h W_hh^T + b_ih + b_hh``;
    ``c' = sigma(f) c + sigma(i) tanh(g)``; ``h' = sigma(o) tanh(c')``.

    Args:
        x: inputs ``[N, in]``.
        h, c: hidden and cell state ``[N, hidden]``.
        cell: the cell whose weights to use.
        kernels: eager or compiled pointwise kernels.

    Returns:
        ``(h', c')``, each ``[N, hidden]``.
    """
    w_ih, w_hh, bias = gate_parameters(cell)
    z = torch.addmm(bias, h, w_hh).addmm_(x, w_ih)
    return LSTMPointwise.apply(z, c, kernels)


@dataclass
class LSTMState:
    """Hidden and cell state of every coordinate: ``h, c`` of shape
    ``[num_layers, *coords, hidden]``."""

    h: Tensor
    c: Tensor

    def detach(self) -> LSTMState:
        """The same state cut from the autograd graph (the truncation boundary)."""
        return LSTMState(self.h.detach(), self.c.detach())

    @staticmethod
    def cat(states: list[LSTMState], dim: int = 1) -> LSTMState:
        """Concatenate states along a coordinate dim (dim 1 is the first coordinate dim)."""
        return LSTMState(torch.cat([s.h for s in states], dim), torch.cat([s.c for s in states], dim))


class LSTMOptimizerNet(nn.Module):
    """Coordinatewise two-layer LSTM optimizer: preprocessed gradient -> LSTMCells -> linear
    head -> ``u = out_mult * output``, the update applied as ``theta_next = theta + u``.

    Args:
        hidden_size: units per LSTM layer (paper: 20).
        num_layers: stacked LSTMCells (paper: 2).
        preproc_p: ``p`` of :func:`preprocess_gradients` (paper: 10).
        out_mult: output multiplier (paper: 0.1).
    """

    def __init__(
        self, hidden_size: int = 20, num_layers: int = 2, preproc_p: float = 10.0, out_mult: float = 0.1
    ) -> None:
        super().__init__()
        if hidden_size <= 0 or num_layers <= 0:
            raise ValueError(
                f"hidden_size and num_layers must be positive, got {hidden_size} and {num_layers}"
            )
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.preproc_p = preproc_p
        self.out_mult = out_mult
        sizes = [2] + [hidden_size] * num_layers
        self.cells = nn.ModuleList(nn.LSTMCell(a, hidden_size) for a in sizes[:-1])
        self.head = nn.Linear(hidden_size, 1)
        self.kernels = EAGER_KERNELS

    def compile_kernels(self) -> LSTMOptimizerNet:
        """Run the LSTM's elementwise work through ``torch.compile`` (:func:`compiled_kernels`)."""
        self.kernels = compiled_kernels()
        return self

    @property
    def config(self) -> dict[str, float | int]:
        """The constructor arguments (primitives only, for checkpoints)."""
        return {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "preproc_p": self.preproc_p,
            "out_mult": self.out_mult,
        }

    def initial_state(
        self,
        coord_shape: torch.Size | tuple[int, ...],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LSTMState:
        """Zero state for coordinates of shape ``coord_shape``."""
        dtype = dtype or self.head.weight.dtype
        shape = (self.num_layers, *coord_shape, self.hidden_size)
        return LSTMState(
            torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
        )

    def forward(self, grad: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        """One optimizer step for every coordinate at once.

        Args:
            grad: gradients ``[*coords]`` (any leading dims, e.g. ``[tasks, D]``).
            state: state ``[num_layers, *coords, hidden]``.

        Returns:
            The update ``u[*coords]`` (``theta_next = theta + u``) and the next state.
        """
        expected = (self.num_layers, *grad.shape, self.hidden_size)
        if state.h.shape != expected or state.c.shape != expected:
            raise ValueError(
                f"LSTM state has shapes {tuple(state.h.shape)} / {tuple(state.c.shape)}, "
                f"expected {expected} for gradients of shape {tuple(grad.shape)}"
            )
        rows = grad.numel()
        x = preprocess_gradients(grad.reshape(rows), self.preproc_p)
        # unbind, not indexing: its backward is one stack instead of a zero-filled copy per layer
        h_in = state.h.reshape(self.num_layers, rows, self.hidden_size).unbind(0)
        c_in = state.c.reshape(self.num_layers, rows, self.hidden_size).unbind(0)
        h_out, c_out = [], []
        for cell, h, c in zip(self.cells, h_in, c_in, strict=True):
            x, c = lstm_cell(x, h, c, cell, self.kernels)
            h_out.append(x)
            c_out.append(c)
        update = self.out_mult * self.head(x).view(grad.shape)
        return update, LSTMState(torch.stack(h_out).view(expected), torch.stack(c_out).view(expected))

    @torch.no_grad()
    def updates_from_one_state(self, grads: Tensor, state: LSTMState, max_coords: int = 1 << 12) -> Tensor:
        """The update :meth:`forward` gives for each row of gradients, all from one state.

        ``u_i = forward(g_i, state)[0]``. The recurrent half of every gate pre-activation,
        ``h W_hh^T + b``, depends on the state alone, so it is computed once per coordinate
        and broadcast over the rows; only ``x_i W_ih^T``, the head and the elementwise work
        are per row (for the paper's net, 1780 of 4980 multiply-adds per coordinate).

        Args:
            grads: ``[n, *coords]``, one gradient per row.
            state: state ``[num_layers, *coords, hidden]``.
            max_coords: coordinates (rows x coordinates) per batched call; tiles that fit
                in cache run several times faster per coordinate on CPU than one huge call.

        Returns:
            ``[n, *coords]``, the update for each row.
        """
        n, coords = len(grads), grads[0].numel()
        flat = grads.reshape(n, coords)
        h = state.h.reshape(self.num_layers, coords, self.hidden_size)
        c = state.c.reshape(self.num_layers, coords, self.hidden_size)
        cells = [gate_parameters(cell) for cell in self.cells]
        tile = min(coords, max_coords)
        rows_per_call = max(1, max_coords // tile)
        features = preprocess_gradients(flat, self.preproc_p)  # [n, coords, 2]
        head_weight, head_bias = self.out_mult * self.head.weight[0], self.out_mult * self.head.bias
        out = torch.empty_like(flat)
        for start in range(0, coords, tile):
            cols = slice(start, start + tile)
            recurrent = [torch.addmm(b, h_l[cols], w_hh) for (_, w_hh, b), h_l in zip(cells, h, strict=True)]
            for first in range(0, n, rows_per_call):
                rows = slice(first, first + rows_per_call)
                x = features[rows, cols]  # [k, tile, 2]
                for (w_ih, _, _), r, c_l in zip(cells, recurrent, c, strict=True):
                    z = torch.baddbmm(r.expand(len(x), -1, -1), x, w_ih.expand(len(x), -1, -1))
                    x = self.kernels.forward(z, c_l[cols])[0]
                out[rows, cols] = torch.matmul(x, head_weight).add_(head_bias)
        return out.view(grads.shape)
