"""The LSTM cell of the coordinatewise optimizer, computed with few memory passes.

:func:`lstm_network_step` is one step of stacked ``nn.LSTMCell`` layers and a linear head over a
batch of rows, one autograd function (:class:`LSTMNetworkStep`) whose forward and backward cost
two matrix products and one elementwise kernel per layer each way. The elementwise part runs
through one of three :class:`PointwiseKernels`:

- :data:`EAGER_KERNELS`: torch operations, any device and dtype (the reference);
- :func:`native_kernels`: ``lstm_pointwise.c``, one pass over memory each way, compiled with the
  system C compiler at first use and called through ``ctypes`` (float32 CPU tensors; anything
  else, or a machine without a compiler, takes the eager kernels);
- :func:`compiled_kernels`: the eager formulas through ``torch.compile``.

All three compute the same formulas; they agree within float rounding (tested).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn

# the LSTMCell gate order (input, forget, cell candidate, output) along the 4*hidden axis
_GATES = 4
NATIVE_SOURCE = Path(__file__).with_name("lstm_pointwise.c")
NATIVE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-shared", "-fPIC")
NATIVE_SWITCH = "L2O_NATIVE_KERNELS"  # "0" turns the C kernels off
_log = logging.getLogger(__name__)


def lstm_pointwise_forward(
    z: Tensor, c: Tensor, out: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The elementwise part of an LSTM step.

    With pre-activations ``z = [z_i, z_f, 2 z_g, z_o]`` (``[..., 4H]``, the candidate's scaled
    by 2 so that one sigmoid serves all gates), ``c`` broadcastable to ``[..., H]``, and
    ``s = sigmoid(z)``:
    ``i, f, o = s_i, s_f, s_o``, ``g = tanh(z_g) = 2 s_g - 1``, ``c' = f c + i g``,
    ``h' = o tanh(c')`` with ``tanh(c') = 2 sigmoid(2 c') - 1`` (faster than ``torch.tanh``
    on CPU, equal within rounding).

    Returns:
        ``(h', c', s, tanh(c'))``; the last two are what the backward needs. ``h', c'`` are
        written into ``out`` when it is given (their preallocated places).
    """
    h_out, c_out = out if out is not None else (None, None)
    s = torch.sigmoid(z)
    i, f, s_g, o = s.chunk(_GATES, dim=-1)
    c_next = torch.addcmul(f * c, i, s_g, value=2, out=c_out).sub_(i)  # f c + i (2 s_g - 1)
    tanh_c = torch.sigmoid(2 * c_next).mul_(2).sub_(1)
    return torch.mul(o, tanh_c, out=h_out), c_next, s, tanh_c


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
    """How :class:`LSTMNetworkStep` runs its elementwise work: eagerly, natively (C) or
    compiled. ``forward(z, c, out=None) -> (h', c', s, tanh(c'))`` may overwrite ``z`` (with
    ``s``), and writes ``h', c'`` into ``out`` when given."""

    forward: Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]] = lstm_pointwise_forward
    backward: Callable[..., tuple[Tensor, Tensor]] = lstm_pointwise_backward


EAGER_KERNELS = PointwiseKernels()


@cache
def compiled_kernels() -> PointwiseKernels:
    """The pointwise kernels through ``torch.compile``: one fused loop each instead of a
    dozen passes over memory (the same formulas, equal within float rounding)."""
    forward = torch.compile(lstm_pointwise_forward)

    def compiled_forward(z: Tensor, c: Tensor, out: tuple[Tensor, Tensor] | None = None):
        h_next, c_next, s, tanh_c = forward(z, c)
        if out is None:
            return h_next, c_next, s, tanh_c
        return out[0].copy_(h_next), out[1].copy_(c_next), s, tanh_c

    return PointwiseKernels(compiled_forward, torch.compile(lstm_pointwise_backward))


def build_native_library(directory: Path) -> ctypes.CDLL:
    """Compile :data:`NATIVE_SOURCE` with the system C compiler (``$CC``, else ``cc``) into
    ``directory`` and load it; ``OSError`` or ``subprocess.CalledProcessError`` when that fails.
    The flags tune for this CPU (``-march=native``), so the library is built per process, not
    cached on disk where another machine could load it."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (cc, gcc or $CC) found")
    target = directory / "lstm_pointwise.so"
    subprocess.run(
        [compiler, *NATIVE_FLAGS, str(NATIVE_SOURCE), "-o", str(target), "-lm"],
        check=True, capture_output=True, timeout=120,
    )
    library = ctypes.CDLL(str(target))
    sizes, pointers = [ctypes.c_int64] * 2, ctypes.c_void_p
    library.lstm_pointwise_forward.argtypes = [*sizes, *[pointers] * 5]
    library.lstm_pointwise_backward.argtypes = [*sizes, *[pointers] * 7]
    return library


@cache
def native_library() -> ctypes.CDLL | None:
    """This process's build of the C kernels, or ``None`` (logged) when they are switched off
    (``L2O_NATIVE_KERNELS=0``) or cannot be built here."""
    if os.environ.get(NATIVE_SWITCH) == "0":
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="l2o_kernels_") as tmp:
            return build_native_library(Path(tmp))  # a loaded library outlives its file
    except (OSError, subprocess.SubprocessError) as err:
        _log.info("LSTM C kernels unavailable (%s); using torch's elementwise kernels", err)
        return None


def _native_fits(z: Tensor, *tensors: Tensor) -> bool:
    """Whether the C kernels take these tensors: float32 on the CPU, ``z`` a 2-d ``[n, 4h]``
    and every other tensor ``[n, h]``, all contiguous."""
    n, width = z.shape if z.dim() == 2 else (0, 0)
    return (
        z.dim() == 2 and z.dtype == torch.float32 and z.device.type == "cpu"
        and all(t.shape == (n, width // _GATES) and t.dtype == z.dtype and t.device == z.device
                for t in tensors)
        and all(t.is_contiguous() for t in (z, *tensors))
    )


def native_pointwise_forward(
    z: Tensor, c: Tensor, out: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`lstm_pointwise_forward` in one C pass, ``z`` overwritten with ``s``, ``h', c'``
    written into ``out`` when given; other tensors (dtypes, devices, shapes) go to the eager
    kernel."""
    if not _native_fits(z, c, *(out or ())):
        return lstm_pointwise_forward(z, c, out)
    h_next, c_next = out if out is not None else (torch.empty_like(c), torch.empty_like(c))
    tanh_c = torch.empty_like(c)
    native_library().lstm_pointwise_forward(
        *c.shape, z.data_ptr(), c.data_ptr(), h_next.data_ptr(), c_next.data_ptr(), tanh_c.data_ptr()
    )
    return h_next, c_next, z, tanh_c


def native_pointwise_backward(
    grad_h: Tensor, grad_c_next: Tensor, s: Tensor, c: Tensor, tanh_c: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`lstm_pointwise_backward` in one C pass (other tensors: the eager kernel)."""
    grad_h, grad_c_next = grad_h.contiguous(), grad_c_next.contiguous()
    if not _native_fits(s, grad_h, grad_c_next, c, tanh_c):
        return lstm_pointwise_backward(grad_h, grad_c_next, s, c, tanh_c)
    grad_z, grad_c = torch.empty_like(s), torch.empty_like(c)
    native_library().lstm_pointwise_backward(
        *c.shape, grad_h.data_ptr(), grad_c_next.data_ptr(), s.data_ptr(), c.data_ptr(),
        tanh_c.data_ptr(), grad_z.data_ptr(), grad_c.data_ptr(),
    )
    return grad_z, grad_c


def native_kernels() -> PointwiseKernels:
    """The C kernels where they are built (:func:`native_library`), else :data:`EAGER_KERNELS`."""
    if native_library() is None:
        return EAGER_KERNELS
    return PointwiseKernels(native_pointwise_forward, native_pointwise_backward)


def gate_parameters(cell: nn.LSTMCell) -> tuple[Tensor, Tensor, Tensor]:
    """``(W_ih^T, W_hh^T, b_ih + b_hh)`` of the cell with the candidate gate's columns scaled
    by 2, so that ``z = x W_ih^T + h W_hh^T + b`` is what :func:`lstm_pointwise_forward` takes."""
    hidden = cell.hidden_size
    scale = torch.ones(_GATES * hidden, dtype=cell.weight_ih.dtype, device=cell.weight_ih.device)
    scale[2 * hidden : 3 * hidden] = 2.0
    bias = (cell.bias_ih + cell.bias_hh) * scale
    return (cell.weight_ih * scale[:, None]).t(), (cell.weight_hh * scale[:, None]).t(), bias


class LSTMNetworkStep(torch.autograd.Function):
    """One step of the stacked LSTM and its linear head over a batch of rows, forward and
    backward written out so that each layer costs two matrix products and one elementwise
    kernel each way, and the backward saves only ``s``, ``tanh(c')`` per layer besides the
    inputs (see :func:`lstm_network_step` for the formulas)."""

    @staticmethod
    def forward(ctx, x, h, c, head_weight, head_bias, out_mult, kernels, *gates):
        layers = len(gates) // 3
        # each layer writes its new state into its place of the outputs: no stacking copy, and
        # the layers' inputs are saved as the output h' itself, whose storage the next step takes
        h_out, c_out = torch.empty_like(h), torch.empty_like(c)
        inputs, saved = [x], []
        for layer in range(layers):
            w_ih, w_hh, bias = gates[3 * layer : 3 * layer + 3]
            z = torch.addmm(bias, h[layer], w_hh).addmm_(inputs[-1], w_ih)
            h_next, _, s, tanh_c = kernels.forward(z, c[layer], out=(h_out[layer], c_out[layer]))
            saved += [s, tanh_c]
            inputs.append(h_next)
        update = torch.addmm(head_bias, inputs[-1], head_weight.t()).squeeze(-1).mul_(out_mult)
        ctx.save_for_backward(h, c, head_weight, x, h_out, *saved, *gates)  # layer l > 0 takes h_out[l - 1]
        ctx.layers, ctx.out_mult, ctx.kernels = layers, out_mult, kernels
        return update, h_out, c_out

    @staticmethod
    def backward(ctx, grad_update, grad_h_out, grad_c_out):
        layers, out_mult = ctx.layers, ctx.out_mult
        h, c, head_weight, x, h_out, *rest = ctx.saved_tensors
        inputs, saved, gates = [x, *h_out.unbind(0)], rest[: 2 * layers], rest[2 * layers :]
        grad_update = grad_update * out_mult  # [N]
        grad_head_weight = (grad_update @ inputs[-1])[None]
        grad_head_bias = grad_update.sum(0, keepdim=True)
        grad_h = torch.addr(grad_h_out[-1], grad_update, head_weight[0])  # dL/dh' of the top layer
        needs_state = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        grad_h_in = torch.empty_like(h) if needs_state else None
        grad_c_in = torch.empty_like(c) if needs_state else None
        grad_gates: list[Tensor | None] = [None] * len(gates)
        for layer in reversed(range(layers)):
            w_ih, w_hh, _ = gates[3 * layer : 3 * layer + 3]
            s, tanh_c = saved[2 * layer : 2 * layer + 2]
            grad_z, grad_c = ctx.kernels.backward(grad_h, grad_c_out[layer], s, c[layer], tanh_c)
            grad_gates[3 * layer : 3 * layer + 3] = [
                inputs[layer].t() @ grad_z, h[layer].t() @ grad_z, grad_z.sum(0)
            ]
            if needs_state:
                torch.mm(grad_z, w_hh.t(), out=grad_h_in[layer])
                grad_c_in[layer] = grad_c
            if layer > 0:
                grad_h = torch.addmm(grad_h_out[layer - 1], grad_z, w_ih.t())
        grad_x = grad_z @ gates[0].t() if ctx.needs_input_grad[0] else None
        return (grad_x, grad_h_in, grad_c_in, grad_head_weight, grad_head_bias, None, None, *grad_gates)


def lstm_network_step(
    x: Tensor, h: Tensor, c: Tensor, cells: list[nn.LSTMCell], head: nn.Linear, out_mult: float,
    kernels: PointwiseKernels,
) -> tuple[Tensor, Tensor, Tensor]:
    """Stacked ``nn.LSTMCell`` steps and a linear head over a batch of rows.

    Layer ``l`` (input ``x_0 = x``): ``[i, f, g, o] = x_l W_ih^T + h_l W_hh^T + b_ih + b_hh``;
    ``c_l' = sigma(f) c_l + sigma(i) tanh(g)``; ``h_l' = sigma(o) tanh(c_l')``; ``x_{l+1} = h_l'``;
    the output ``u = out_mult * (x_L w_head + b_head)``.

    Args:
        x: inputs ``[N, in]``.
        h, c: hidden and cell states ``[layers, N, hidden]`` (contiguous).
        cells: the layers' cells; head: ``Linear(hidden, 1)``.
        out_mult: the output multiplier.
        kernels: the elementwise kernels (:class:`PointwiseKernels`).

    Returns:
        ``(u[N], h'[layers, N, hidden], c'[layers, N, hidden])``.
    """
    gates = [tensor for cell in cells for tensor in gate_parameters(cell)]
    return LSTMNetworkStep.apply(x, h, c, head.weight, head.bias, out_mult, kernels, *gates)
