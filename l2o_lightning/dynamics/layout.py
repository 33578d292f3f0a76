"""Flat vectors between the optimizee and its optimizer: the optimizee's gradient in its own
flat layout (:class:`~l2o_lightning.optimizees.ParamLayout`), and where the optimizer's
coordinates (its parameters in param-group order, the order of
:mod:`l2o_lightning.dynamics.update_rules`) sit in that layout."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim import Optimizer

from l2o_lightning.dynamics.update_rules import optimizer_params
from l2o_lightning.errors import ConfigError
from l2o_lightning.optimizees import MLP


def flat_grad(model: MLP) -> Tensor:
    """The current ``.grad`` of every optimizee parameter as one ``[D]`` copy (0 if none):
    ``g = concat_p vec(p.grad)`` over the parameters ``p`` in the layout's order."""
    grads = {n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in model.named_parameters()}
    return model.layout.flatten(grads).detach().clone()


def optimizer_index(optimizer: Optimizer, model: MLP) -> Tensor | slice:
    """Positions in the optimizee's flat layout of the optimizer's coordinates, in the
    optimizer's order: ``flat[..., index]`` is what update rules take (``slice(None)``, a
    view, when the orders agree, as for ``OptimizeeModule``).

    ``index = concat_p [start_p, stop_p)`` over the optimizer's parameters ``p`` in
    param-group order, ``[start_p, stop_p)`` the slice of ``p`` in the layout.
    """
    slices = {id(p): model.layout.slices[name] for name, p in model.named_parameters()}
    params = optimizer_params(optimizer)
    if not all(id(p) in slices for p in params):
        raise ConfigError(
            f"the optimizer {type(optimizer).__name__} holds parameters that are not the "
            "optimizee's; the probes need an optimizer over `pl_module.optimizee`."
        )
    index = torch.cat([torch.arange(slices[id(p)].start, slices[id(p)].stop) for p in params])
    return slice(None) if torch.equal(index, torch.arange(model.layout.numel)) else index
