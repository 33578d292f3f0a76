"""The coordinatewise LSTM optimizer of Andrychowicz et al. (2016), "Learning to learn by
gradient descent by gradient descent", https://arxiv.org/abs/1606.04474.

Every scalar parameter of the optimizee is one row of a batch: the network sees only that
coordinate's (preprocessed) gradient and its own hidden state, and proposes that
coordinate's update. All coordinates of all parameter tensors (and of several optimizees
at once) go through one batched call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from l2o_lightning.errors import ConfigError
from l2o_lightning.lstm_kernels import compiled_kernels, gate_parameters, lstm_network_step, native_kernels


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
        for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"`{name}` of LSTMOptimizerNet must be a positive integer, got {value!r}.")
        if not 0 < preproc_p < math.inf:  # log|g| / p and e^p g need a finite p > 0
            raise ConfigError(
                f"`preproc_p` of LSTMOptimizerNet must be positive and finite, got {preproc_p!r}."
            )
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.preproc_p = preproc_p
        self.out_mult = out_mult
        sizes = [2] + [hidden_size] * num_layers
        self.cells = nn.ModuleList(nn.LSTMCell(a, hidden_size) for a in sizes[:-1])
        self.head = nn.Linear(hidden_size, 1)
        self.kernels = native_kernels()

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
        flat = (self.num_layers, rows, self.hidden_size)
        h, c = (t.reshape(flat).contiguous() for t in (state.h, state.c))
        update, h, c = lstm_network_step(x, h, c, list(self.cells), self.head, self.out_mult, self.kernels)
        return update.view(grad.shape), LSTMState(h.view(expected), c.view(expected))

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
