"""MLP optimizees: ordinary ``nn.Module``s that also run functionally on one flat
parameter vector, and that describe their symmetry groups (Kunin et al. 2021,
https://arxiv.org/abs/2012.04728)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from l2o_lightning.errors import ConfigError

ACTIVATIONS = {
    "leaky_relu": F.leaky_relu,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
}
# positively homogeneous: act(c * x) = c * act(x) for c > 0, which gives rescale symmetry
HOMOGENEOUS_ACTIVATIONS = frozenset({"leaky_relu", "relu", "linear"})

SymmetryKind = Literal["rescale", "scale", "translation"]


@dataclass(frozen=True)
class SymmetryGroup:
    """One family of symmetry-induced gradient constraints, one constraint per neuron.

    The constraint vector of neuron ``j`` is built from parameter slices:

    - ``rescale``: rows ``j`` of ``incoming`` (weight row, bias entry) with ``+``,
      columns ``j`` of ``outgoing`` (next layer's weight) with ``-``; the constraint
      is ``<g, theta_tilde_j> = 0``.
    - ``scale``: rows ``j`` of ``incoming`` (the Linear feeding a BatchNorm).
    - ``translation``: ``incoming = (W, b)`` of the softmax layer; one constraint per
      input column ``i`` of ``W`` (``sum_k g[W[k, i]] = 0``) and one for ``b``.

    Attributes:
        kind: which symmetry.
        layer: the hidden layer (or ``"output"``) the group belongs to.
        incoming: parameter names sliced by row (dim 0).
        outgoing: parameter names sliced by column (dim 1); rescale only.
    """

    kind: SymmetryKind
    layer: str
    incoming: tuple[str, ...]
    outgoing: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParamLayout:
    """Where each named parameter lives inside one flat vector (concatenated in order)."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def from_module(cls, module: nn.Module) -> ParamLayout:
        named = list(module.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(p.shape for _, p in named))

    @cached_property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @cached_property
    def numel(self) -> int:
        return sum(self.sizes)

    @cached_property
    def slices(self) -> dict[str, slice]:
        """``name -> slice`` of that parameter inside the flat vector."""
        out, start = {}, 0
        for name, size in zip(self.names, self.sizes, strict=True):
            out[name] = slice(start, start + size)
            start += size
        return out

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Views of ``flat[..., D]`` shaped like the parameters (leading dims kept)."""
        if flat.shape[-1] != self.numel:
            raise ValueError(
                f"flat parameters have {flat.shape[-1]} entries, the layout needs {self.numel}"
            )
        lead = flat.shape[:-1]
        chunks = flat.split(self.sizes, dim=-1)
        return {n: c.view(*lead, *s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """Concatenate named tensors (each shaped like its parameter) into ``[D]``."""
        return torch.cat([tensors[n].reshape(-1) for n in self.names])


class MLP(nn.Module):
    """``784 -> hidden... -> 10`` classifier with softmax cross-entropy.

    Each hidden layer is ``Linear -> [BatchNorm1d(affine)] -> act``. The functional forms
    (:meth:`functional_logits`, what meta-training and the probes use) always normalise with
    the batch's statistics and touch no buffer; with ``track_running_stats`` the module's own
    forward also keeps running statistics, which its eval mode then uses.
    Parameters are named ``linears.{l}.weight|bias`` and ``norms.{l}.weight|bias``;
    the last Linear is the output layer.

    Args:
        hidden: width of each hidden layer (paper: ``[20]``).
        activation: one of ``leaky_relu``, ``relu``, ``sigmoid``, ``linear``.
        batchnorm: put a BatchNorm before every hidden activation.
        track_running_stats: BatchNorm keeps running mean and variance for eval mode (the
            paper's; training-mode outputs are the same either way).
        in_features: input size (flattened images).
        num_classes: number of output logits.
    """

    def __init__(
        self,
        hidden: Sequence[int] = (20,),
        activation: str = "leaky_relu",
        batchnorm: bool = False,
        in_features: int = 784,
        num_classes: int = 10,
        track_running_stats: bool = False,
    ) -> None:
        super().__init__()
        validate_optimizee_args(hidden, activation)
        for name, value in (("in_features", in_features), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"`{name}` of MLP must be a positive integer, got {value!r}.")
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.batchnorm = batchnorm
        widths = (in_features, *self.hidden, num_classes)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(h, affine=True, track_running_stats=track_running_stats) for h in self.hidden
        ) if batchnorm else nn.ModuleList()
        self._act = ACTIVATIONS[activation]

    def forward(self, x: Tensor, batch_statistics: bool = False) -> Tensor:
        """Logits; ``batch_statistics`` normalises with the batch's own statistics whatever the
        mode, without updating running statistics (the functional forms)."""
        x = x.flatten(1)
        for layer, linear in enumerate(self.linears[:-1]):
            x = linear(x)
            if self.batchnorm:
                norm = self.norms[layer]
                x = (F.batch_norm(x, None, None, norm.weight, norm.bias, True, 0.0, norm.eps)
                     if batch_statistics else norm(x))
            x = self._act(x)
        return self.linears[-1](x)

    @cached_property
    def layout(self) -> ParamLayout:
        return ParamLayout.from_module(self)

    def flat_parameters(self) -> Tensor:
        """The module's current parameters as one detached ``[D]`` vector."""
        return self.layout.flatten(dict(self.named_parameters())).detach().clone()

    def sample_flat(self, generator: torch.Generator | None = None) -> Tensor:
        """A fresh initialisation as a ``[D]`` vector, drawn from ``generator``.

        Linear: ``W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (PyTorch's default);
        BatchNorm: ``gamma = 1, beta = 0``.
        """
        parts = {}
        for name, param in self.named_parameters():
            if name.startswith("norms."):
                parts[name] = torch.ones_like(param) if name.endswith("weight") else torch.zeros_like(param)
                continue
            linear = self.get_submodule(name.rsplit(".", 1)[0])
            bound = 1.0 / math.sqrt(linear.in_features)
            u = torch.rand(param.shape, generator=generator, device=param.device, dtype=param.dtype)
            parts[name] = (2 * u - 1) * bound
        return self.layout.flatten(parts)

    def functional_logits(self, flat: Tensor, x: Tensor) -> Tensor:
        """Logits of the model whose parameters are the flat vector ``flat[D]``."""
        return functional_call(self, self.layout.unflatten(flat), (x,), {"batch_statistics": True})

    def functional_loss(self, flat: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy of the model with parameters ``flat[D]`` on ``(x, y)``."""
        return F.cross_entropy(self.functional_logits(flat, x), y)

    def symmetry_groups(self) -> list[SymmetryGroup]:
        """The rescale, scale and translation groups of this architecture (any depth)."""
        groups = []
        n_hidden = len(self.hidden)
        for layer in range(n_hidden):
            linear = (f"linears.{layer}.weight", f"linears.{layer}.bias")
            if self.batchnorm:
                groups.append(SymmetryGroup("scale", f"hidden{layer}", linear))
            if self.activation in HOMOGENEOUS_ACTIVATIONS:
                pre_act = (f"norms.{layer}.weight", f"norms.{layer}.bias") if self.batchnorm else linear
                groups.append(
                    SymmetryGroup("rescale", f"hidden{layer}", pre_act, (f"linears.{layer + 1}.weight",))
                )
        out = (f"linears.{n_hidden}.weight", f"linears.{n_hidden}.bias")
        groups.append(SymmetryGroup("translation", "output", out))
        return groups


def validate_optimizee_args(hidden: Sequence[int], activation: str) -> None:
    """Raise :class:`ConfigError` naming the setting when an MLP setting is invalid."""
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"unknown activation {activation!r} (`activation` of MLP); "
            f"allowed: {', '.join(sorted(ACTIVATIONS))}."
        )
    if isinstance(hidden, int | str) or not hidden or not all(
        isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden
    ):
        raise ConfigError(
            f"invalid hidden sizes {hidden!r} (`hidden` of MLP); "
            "give a list of positive layer widths, e.g. [20] or [40, 40]."
        )
