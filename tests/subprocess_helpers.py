"""Real ``l2o`` subprocesses for tests, and callbacks they add to them (importable there
through ``PYTHONPATH=tests``): kill the process with a real SIGKILL at a chosen point, or save
each DDP process's L2O weights, or make one process diverge, or count the evaluation
optimizees a process trains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from l2o_lightning import meta_eval
from l2o_lightning.callbacks import SymmetryProbe

TESTS = Path(__file__).resolve().parent
QUIET = ("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false")


def callbacks_config(path: Path, callbacks: list[dict], append: bool = False) -> Path:
    """Write a config that replaces ``trainer.callbacks`` with ``callbacks`` (class_path dicts),
    or appends them to the earlier configs' ones."""
    path.write_text(yaml.safe_dump({"trainer": {"callbacks+" if append else "callbacks": callbacks}}))
    return path


def run_l2o(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m l2o_lightning.cli ARGS`` in ``cwd`` with one thread per process and these
    helpers importable; stdout and stderr are captured."""
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "l2o_lightning.cli", *args, *QUIET],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


class KillAtBatch(L.Callback):
    """SIGKILL this process as training batch ``batch`` (0-based) starts."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class CheckpointThenKill(ModelCheckpoint):
    """A ModelCheckpoint that SIGKILLs this process right after writing its checkpoint at
    global step ``kill_at_step``: before that truncation's metrics reach the logger (the worst
    moment for the TensorBoard curves)."""

    def __init__(self, kill_at_step: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.kill_at_step = kill_at_step

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        super().on_train_batch_end(trainer, *args, **kwargs)
        if trainer.global_step == self.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillAfterProbing(SymmetryProbe):
    """A SymmetryProbe (every step) that writes what it observed at optimizee step
    ``kill_at`` to disk, then SIGKILLs this process: mid-truncation, with part of the
    truncation's probe values on disk and none of its meta-training metrics."""

    def __init__(self, kill_at: int) -> None:
        super().__init__(every_n_steps=1)
        self.kill_at = kill_at

    def observe(self, step: int, *args) -> None:
        super().observe(step, *args)
        if step == self.kill_at:
            self._logger.experiment.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class SaveRankWeights(L.Callback):
    """At the end of training, every process saves its L2O weights to ``<folder>/rank<r>.pt``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = {name: p.detach().cpu() for name, p in pl_module.net.state_dict().items()}
        torch.save(weights, self.folder / f"rank{trainer.global_rank}.pt")


class ExplodeOnRank(L.Callback):
    """Multiply the L2O's output by ``1e30`` on process ``rank`` alone during training batch
    ``batch`` (that process's optimizee parameters overflow; the others' stay finite)."""

    def __init__(self, rank: int, batch: int) -> None:
        self.rank, self.batch = rank, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        exploding = trainer.global_rank == self.rank and batch_idx == self.batch
        pl_module.net.out_mult = 1e30 if exploding else 0.1


class RecordEvaluationTasks(L.Callback):
    """Record how many evaluation optimizees this process trains itself (the trajectories
    passed to ``run_trajectories`` in :mod:`l2o_lightning.meta_eval`) into
    ``folder/rank<r>.pt`` when testing ends."""

    def __init__(self, folder: str) -> None:
        self.folder, self.counts = Path(folder), []

    def setup(self, trainer, pl_module, stage: str) -> None:
        original = meta_eval.run_trajectories

        def counting(optimizer, optimizee, trajectory, *args):
            self.counts.append(len(trajectory.params))
            return original(optimizer, optimizee, trajectory, *args)

        meta_eval.run_trajectories = counting

    def on_test_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.counts, self.folder / f"rank{trainer.global_rank}.pt")
