"""What meta-training checkpoints hold beyond Lightning's own state, and how they are read.

- ``"l2o"`` (:data:`CHECKPOINT_KEY`): the learned optimizer, primitives and tensors only
  (:func:`checkpoint_entry`), which :class:`~l2o_lightning.optim.L2O` and the shipped
  ``pretrained:<name>`` files load (:func:`l2o_entry`, :func:`net_from_checkpoint_entry`).
- ``"meta_training"`` (:data:`TRAINING_STATE_KEY`): what resuming needs, the run's counters and
  every process's trajectories (:func:`pack_training_state`, :func:`unpack_trajectory`).

Every file is read with ``torch.load(weights_only=True)`` (:func:`read_checkpoint`): nothing in
it is executed. Pure functions over dicts of tensors and primitives; no Lightning.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from l2o_lightning.errors import ConfigError
from l2o_lightning.learned import LSTMOptimizerNet, LSTMState

if TYPE_CHECKING:  # unroll imports the optimizers, which read checkpoints
    from l2o_lightning.unroll import Trajectory

CHECKPOINT_KEY = "l2o"
CHECKPOINT_FORMAT_VERSION = 1
TRAINING_STATE_KEY = "meta_training"
TRAINING_STATE_VERSION = 1


def checkpoint_entry(net: LSTMOptimizerNet) -> dict:
    """The network as primitives and tensors only, so ``torch.load(weights_only=True)``
    reads it: ``{"format_version", "net_config", "state_dict"}``."""
    return {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "net_config": net.config,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }


def net_from_checkpoint_entry(entry: dict) -> LSTMOptimizerNet:
    """Rebuild the network saved by :func:`checkpoint_entry`."""
    net = LSTMOptimizerNet(**entry["net_config"])
    net.load_state_dict(entry["state_dict"])
    return net


def _load_failure(err: Exception) -> str:
    """One line on why ``torch.load(weights_only=True)`` failed, without torch's advice to
    retry with ``weights_only=False`` (unsafe for files of unknown origin)."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    detail = " ".join(text.split())
    return f"{type(err).__name__}: {detail}" if detail else type(err).__name__


def read_checkpoint(path: str | Path, where: str, hint: str) -> dict:
    """A checkpoint file's content, read with ``torch.load(weights_only=True)`` (tensors and
    primitives only: nothing in the file is executed).

    Args:
        path: the file.
        where: how the error names it, e.g. "checkpoint 'x.ckpt' (setting `ckpt_path`)".
        hint: the fix the error ends with.

    Raises:
        ConfigError: the file is missing, truncated, corrupt or holds other objects.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{where} does not exist; {hint}.")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling arbitrary bytes can raise almost any error
        reason = _load_failure(err)
        raise ConfigError(
            f"{where} cannot be read as a checkpoint of tensors and primitives ({reason}); {hint}."
        ) from None
    if not isinstance(content, dict):
        raise ConfigError(f"{where} holds a {type(content).__name__}, not a checkpoint dict; {hint}.")
    return content


def l2o_entry(content: dict, where: str, hint: str) -> dict:
    """The ``"l2o"`` entry of a meta-training checkpoint's content, checked for its kind and
    format version; :class:`ConfigError` naming ``where`` otherwise."""
    entry = content.get(CHECKPOINT_KEY)
    if not isinstance(entry, dict):
        hparams = content.get("hyper_parameters")
        module = hparams.get("_class_path") if isinstance(hparams, dict) else None
        origin = f"it was written by {module}" if module else "it was not written by meta-training"
        raise ConfigError(
            f"{where} has no '{CHECKPOINT_KEY}' entry, so it is not a MetaTrainModule checkpoint "
            f"({origin}); {hint}."
        )
    if entry.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise ConfigError(
            f"{where} has format version {entry.get('format_version')!r}, this version of "
            f"l2o_lightning reads {CHECKPOINT_FORMAT_VERSION}; meta-train again or use a matching release."
        )
    return entry


def pack_training_state(
    progress: dict, trajectory: Trajectory | None, processes: int, tasks_per_step: int,
    gather: Callable[[Tensor], Tensor],
) -> dict:
    """The ``"meta_training"`` entry: ``{"format_version", "progress", "trajectory"}``.

    Args:
        progress: the run's counters (``MetaProgress`` as a dict).
        trajectory: this process's trajectories (``None`` between rounds).
        processes, tasks_per_step: the run's layout, which a resumed run must share to
            continue the trajectories.
        gather: stacks a tensor of every process along a new leading process dim
            (under DDP a collective: every process packs).

    Returns:
        The entry; its ``"trajectory"`` holds ``params``, ``h``, ``c`` as
        ``[processes, ...]`` CPU tensors, the step and the layout (``None`` without one).
    """
    packed = None
    if trajectory is not None:
        params, state = trajectory.params, trajectory.state
        packed = {
            "processes": processes, "tasks_per_step": tasks_per_step, "step": trajectory.step,
            "params": gather(params).cpu(), "h": gather(state.h).cpu(), "c": gather(state.c).cpu(),
        }
    return {"format_version": TRAINING_STATE_VERSION, "progress": progress, "trajectory": packed}


def training_state(checkpoint: dict, where: str) -> dict | None:
    """The ``"meta_training"`` entry of a checkpoint (``None`` when it has none).

    Raises:
        ConfigError: naming ``where``, when the entry's format version is not this release's.
    """
    state = checkpoint.get(TRAINING_STATE_KEY)
    if state is not None and state.get("format_version") != TRAINING_STATE_VERSION:
        raise ConfigError(
            f"{where} holds meta-training state of format version {state.get('format_version')!r}, this "
            f"version of l2o_lightning resumes {TRAINING_STATE_VERSION}; resume with a matching release, "
            "or start afresh (without `--ckpt_path`)."
        )
    return state


def layout_mismatch(saved: dict, processes: int, tasks_per_step: int) -> str | None:
    """Why saved trajectories cannot continue in a run of ``processes`` x ``tasks_per_step``
    (a sentence for a warning), or ``None`` when the layouts agree."""
    if (saved["processes"], saved["tasks_per_step"]) == (processes, tasks_per_step):
        return None
    return (
        f"the checkpoint's trajectories ran on {saved['processes']} process(es) x "
        f"{saved['tasks_per_step']} task(s), this run has {processes} x {tasks_per_step}: "
        "they restart with fresh optimizees."
    )


def unpack_trajectory(saved: dict, rank: int, device: torch.device | str) -> tuple[Tensor, LSTMState, int]:
    """Process ``rank``'s trajectories of a packed ``"trajectory"`` (:func:`pack_training_state`)
    on ``device``: the fields of a ``Trajectory``, parameters, LSTM state and step. The layouts
    must agree (:func:`layout_mismatch`)."""
    state = LSTMState(saved["h"][rank].to(device), saved["c"][rank].to(device))
    return saved["params"][rank].to(device), state, saved["step"]
