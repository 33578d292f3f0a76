"""Cost of the probes: training time with each probe (default settings, every 10 steps) and
with the paper's probe set (``configs/paper/base/probes.yaml``: the tail index over the whole
training loader, 469 minibatches, the covariance over 93) relative to plain training, and
unit gradients by ``torch.func`` vs a Python loop.

Usage: python benchmarks/bench_probes.py [--steps 300] [--repeats 3] [--threads 1] [--optimizer adam]
[--run-steps 1000] [--probes none paper ...] [--smoke] (needs MNIST: set L2O_DATA_DIR). Prints
markdown tables; the target: a 1000-step meta-test with the default probes every 10 steps costs
<= 2x the run without them. ``--smoke``: 20 steps, one repeat, no whole runs, rows none and
paper (seconds).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import time
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import torch
import yaml

from l2o_lightning.callbacks import CovarianceProbe, SymmetryProbe, TailIndexProbe, UpdateStatsProbe
from l2o_lightning.checkpoints import CHECKPOINT_KEY, checkpoint_entry
from l2o_lightning.data import MNISTDataModule
from l2o_lightning.dynamics.per_sample import grouped_pool_gradients, pool_gradients, split_units
from l2o_lightning.learned import LSTMOptimizerNet
from l2o_lightning.optim import L2O
from l2o_lightning.optimizee_module import OptimizeeModule
from l2o_lightning.optimizees import MLP

WARMUP = 10
PAPER_PROBES = Path(__file__).resolve().parents[1] / "configs" / "paper" / "base" / "probes.yaml"


def paper_probes() -> list[L.Callback]:
    """The callbacks of ``configs/paper/base/probes.yaml`` (a list of class paths and arguments)."""
    callbacks = yaml.safe_load(PAPER_PROBES.read_text())
    made = []
    for callback in callbacks:
        module, name = callback["class_path"].rsplit(".", 1)
        made.append(getattr(importlib.import_module(module), name)(**callback.get("init_args", {})))
    return made


PROBES = {
    "none": list,
    "SymmetryProbe": lambda: [SymmetryProbe()],
    "UpdateStatsProbe": lambda: [UpdateStatsProbe()],
    "TailIndexProbe": lambda: [TailIndexProbe()],
    "CovarianceProbe": lambda: [CovarianceProbe()],
    "all": lambda: [SymmetryProbe(), UpdateStatsProbe(), TailIndexProbe(), CovarianceProbe()],
    "all, num_units=16": lambda: [
        SymmetryProbe(), UpdateStatsProbe(), TailIndexProbe(num_units=16), CovarianceProbe(num_units=16)
    ],
    "paper": paper_probes,
}


class StepTimer(L.Callback):
    """Wall time of the training steps after a warm-up, and of the whole fit."""

    def on_fit_start(self, trainer, pl_module):
        self.fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == WARMUP:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds_per_step = (time.perf_counter() - self.start) / (trainer.global_step - WARMUP)

    def on_fit_end(self, trainer, pl_module):
        self.fit_seconds = time.perf_counter() - self.fit_start


def make_optimizer(name: str, save_dir: str):
    """``params -> optimizer``: Adam (lr 0.03) or an L2O from a random (untrained) LSTM."""
    if name == "adam":
        return partial(torch.optim.Adam, lr=0.03)
    path = Path(save_dir) / "random_l2o.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({CHECKPOINT_KEY: checkpoint_entry(LSTMOptimizerNet())}, path)
    return partial(L2O, checkpoint=str(path))


def timed_fit(
    callbacks: list[L.Callback], steps: int, save_dir: str, optimizer, val_every: int = 0
) -> StepTimer:
    """Paper setting: Leaky ReLU 784-20-10, batch 128; ``val_every > 0`` validates on the
    10k test images every that many steps, as ``configs/meta_test/leaky_relu.yaml``."""
    torch.manual_seed(0)
    module = OptimizeeModule()
    module.configure_optimizers = lambda: optimizer(module.parameters())
    timer = StepTimer()
    validation = {"val_check_interval": val_every, "check_val_every_n_epoch": None} if val_every else {
        "limit_val_batches": 0
    }
    trainer = L.Trainer(
        max_steps=steps + WARMUP, callbacks=[*callbacks, timer], log_every_n_steps=1, **validation,
        logger=L.pytorch.loggers.TensorBoardLogger(save_dir), enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=MNISTDataModule(seed=0))
    return timer


def best_of(repeats: int, fn) -> float:
    return min(fn() for _ in range(repeats))


def loop_gradients(model: MLP, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reference for ``pool_gradients``: one autograd call per unit (per sample with BN)."""
    theta = flat.clone().requires_grad_()
    if model.batchnorm and x.shape[1] == 1:  # per-sample losses of one batch, one backward each
        logits = model.functional_logits(theta, x[:, 0])
        losses = torch.nn.functional.cross_entropy(logits, y[:, 0], reduction="none")
        return torch.stack([torch.autograd.grad(loss, theta, retain_graph=True)[0] for loss in losses])
    losses = [model.functional_loss(theta, xu, yu) for xu, yu in zip(x, y, strict=True)]
    return torch.stack([torch.autograd.grad(loss, theta)[0] for loss in losses])


def timed(repeats: int, fn, *args) -> float:
    """Best wall time of ``fn(*args)`` over ``repeats`` calls."""

    def once() -> float:
        start = time.perf_counter()
        fn(*args)
        return time.perf_counter() - start

    return best_of(repeats, once)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--optimizer", choices=["adam", "l2o"], default="adam")
    parser.add_argument("--run-steps", type=int, default=1000, help="whole-run comparison (0: skip)")
    parser.add_argument("--save-dir", default="/tmp/bench_probes")
    parser.add_argument("--probes", nargs="+", choices=list(PROBES), default=list(PROBES),
                        help="rows to time (none, the baseline, always runs)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds: --steps 20 --repeats 1 "
                        "--run-steps 0 --probes none paper")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.repeats, args.run_steps, args.probes = 20, 1, 0, ["none", "paper"]
    rows = ["none", *(name for name in args.probes if name != "none")]
    optimizer = make_optimizer(args.optimizer, args.save_dir)
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    print(f"## Training with probes (every 10 steps; defaults, or paper = configs/paper/base/probes.yaml): "
          f"{args.optimizer}, {args.steps} steps, {args.threads} thread(s)")
    print("\n| probes | ms / step | relative |\n|---|---|---|")
    best = dict.fromkeys(rows, float("inf"))
    for _ in range(args.repeats):  # round robin: a busy spell on a shared machine hits every row
        for name in rows:
            timer = timed_fit(PROBES[name](), args.steps, args.save_dir, optimizer)
            best[name] = min(best[name], timer.seconds_per_step)
    for name, per_step in best.items():
        print(f"| {name} | {1e3 * per_step:.2f} | {per_step / best['none']:.2f}x |")

    if args.run_steps:
        print(f"\n## Whole runs: {args.run_steps} steps validating every 250 (configs/meta_test), "
              "probes every 10 steps")
        print("\n| probes | fit s | relative |\n|---|---|---|")
        whole = [name for name in rows if name in ("none", "all", "all, num_units=16", "paper")]
        runs = dict.fromkeys(whole, float("inf"))
        for _ in range(args.repeats):
            for name in runs:
                steps = args.run_steps - WARMUP
                timer = timed_fit(PROBES[name](), steps, args.save_dir, optimizer, val_every=250)
                runs[name] = min(runs[name], timer.fit_seconds)
        for name, seconds in runs.items():
            print(f"| {name} | {seconds:.1f} | {seconds / runs['none']:.2f}x |")

    print("\n## Unit gradients: torch.func (vmap(grad) / jacrev) vs a Python loop")
    print("\n| optimizee | units x samples | func ms | loop ms | speed-up |\n|---|---|---|---|---|")
    x, y = MNISTDataModule().probe_pool(32 * 128, seed=0)
    leaky, bn = MLP(), MLP(activation="relu", batchnorm=True)
    for label, model, units, size in [
        ("leaky_relu", leaky, 32, 128), ("leaky_relu", leaky, 128, 1),
        ("bn_relu", bn, 32, 128), ("bn_relu (Jacobian rows)", bn, 128, 1),
    ]:
        n = units * size
        pool = model.flat_parameters(), x[:n].view(units, size, -1), y[:n].view(units, size)
        func = timed(args.repeats, pool_gradients, model, *pool)
        looped = timed(args.repeats, loop_gradients, model, *pool)
        ms = f"{1e3 * func:.1f} | {1e3 * looped:.1f}"
        print(f"| {label} | {units} x {size} | {ms} | {looped / func:.1f}x |")
    # num_units: all: 468 minibatches of 128 in one call, the last (96) in another
    groups = split_units(*MNISTDataModule().probe_pool("all", seed=0), 128)
    func = timed(args.repeats, grouped_pool_gradients, leaky, leaky.flat_parameters(), groups)
    looped = sum(timed(args.repeats, loop_gradients, leaky, leaky.flat_parameters(), *g) for g in groups)
    print(f"| leaky_relu (whole loader) | 468 x 128 + 1 x 96 | {1e3 * func:.1f} | {1e3 * looped:.1f} "
          f"| {looped / func:.1f}x |")


if __name__ == "__main__":
    main()
