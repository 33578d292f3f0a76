"""Meta-training at scale on this machine: throughput with ``tasks_per_step`` K on one process
and with 2 DDP processes (CPU, gloo), and how long a SIGKILLed run takes to resume. Not a test.

Usage: python benchmarks/bench_scale.py [--tasks 1 4 16] [--ddp-tasks 1] [--steps 6] [--unroll 20]
                                        [--threads 1] [--smoke]

Every run is a real ``l2o fit -c configs/meta_train/leaky_relu.yaml`` subprocess (the paper's
784-20-10 MLP, batch 128, truncations of ``--unroll`` steps, no validation) with
:class:`StepTimes`, which records when each meta-step ends. Throughput is optimizee steps per
second summed over tasks and processes, ``K * W * unroll / t``, with ``t`` the median seconds
per meta-step after the first. Time to resume: from launching ``l2o fit ... --ckpt_path last``
after a SIGKILL to the end of its first meta-step (process start, imports, MNIST, checkpoint
restore and one meta-step), next to the same for a fresh start.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import lightning as L
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/meta_train/leaky_relu.yaml"


class StepTimes(L.Callback):
    """Write ``{"times", "steps", "maxrss_mb"}`` (wall-clock end and global step of every
    meta-step, peak memory) to ``<path>.rank<r>.json`` after each meta-step."""

    def __init__(self, path: str) -> None:
        self.path, self.times, self.steps = path, [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.times.append(time.time())
        self.steps.append(trainer.global_step)
        maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        record = {"times": self.times, "steps": self.steps, "maxrss_mb": maxrss_mb}
        path = Path(f"{self.path}.rank{trainer.global_rank}.json")
        path.with_suffix(".tmp").write_text(json.dumps(record))
        path.with_suffix(".tmp").replace(path)  # whole records only, for a reader polling it


def launch(args: list[str], folder: Path, name: str, threads: int, callbacks: tuple[dict, ...] = ()) -> tuple:
    """Start ``l2o fit`` with :class:`StepTimes` (records under ``folder/name``); returns the
    process, its launch time and the records' path prefix."""
    prefix = folder / name
    timer = {"class_path": "bench_scale.StepTimes", "init_args": {"path": str(prefix)}}
    config = folder / f"{name}.yaml"
    # a list item with the class_path of the meta_train config's item at that index is merged into
    # it: the timer goes first (the config's first is a ModelCheckpoint), checkpoints name every setting
    config.write_text(yaml.safe_dump({"trainer": {"callbacks": [timer, *callbacks]}}))
    env = {**os.environ, "PYTHONPATH": str(REPO / "benchmarks"), "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "l2o_lightning.cli", "fit", "-c", CONFIG, "-c", str(config), *args,
               "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
               "--trainer.enable_model_summary", "false",
               "--trainer.logger.init_args.save_dir", str(folder / "logs")]
    start = time.time()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    return process, start, prefix


def records(prefix: Path, rank: int = 0) -> dict:
    path = Path(f"{prefix}.rank{rank}.json")
    return json.loads(path.read_text()) if path.exists() else {"times": [], "steps": []}


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"l2o fit failed ({process.returncode}):\n{err[-3000:]}")


def throughput(tasks: int, processes: int, steps: int, unroll: int, threads: int, folder: Path) -> tuple:
    """``(optimizee steps/s over all tasks and processes, seconds per meta-step, peak MB per process)``."""
    args = ["--model.unroll.length", str(unroll), "--model.unroll.n_iters", str(10 * unroll),
            "--model.unroll.tasks_per_step", str(tasks), "--data.batches_per_step", str(unroll * tasks),
            "--trainer.max_steps", str(steps)]
    if processes > 1:
        args += ["--trainer.accelerator", "cpu", "--trainer.devices", str(processes),
                 "--trainer.strategy", "ddp"]
    process, _, prefix = launch(args, folder, f"k{tasks}_w{processes}", threads)
    finish(process)
    record = records(prefix)
    per_step = statistics.median(b - a for a, b in pairwise(record["times"][1:]))
    return tasks * processes * unroll / per_step, per_step, record["maxrss_mb"]


def resume_times(unroll: int, threads: int, folder: Path) -> dict[str, float]:
    """SIGKILL a run after its third meta-step (checkpoints every 2), restart it with
    ``--ckpt_path last``; seconds from launch to the end of the first meta-step, both runs."""
    periodic = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"monitor": None, "every_n_train_steps": 2, "save_top_k": 0, "save_last": True}}
    args = ["--model.unroll.length", str(unroll), "--model.unroll.n_iters", str(10 * unroll),
            "--data.batches_per_step", str(unroll), "--trainer.max_steps", "6"]
    process, start, prefix = launch(args, folder, "fresh", threads, (periodic,))
    while len(records(prefix)["times"]) < 3:
        if process.poll() is not None:
            raise SystemExit(f"the run to kill ended by itself:\n{process.stderr.read()[-3000:]}")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    fresh = records(prefix)
    (checkpoint,) = (folder / "logs").glob("*/*/version_*/checkpoints/last.ckpt")

    process, restart, resumed_prefix = launch([*args, "--ckpt_path", "last"], folder, "resumed", threads,
                                              (periodic,))
    finish(process)
    resumed = records(resumed_prefix)
    return {
        "fresh start -> first meta-step": fresh["times"][0] - start,
        "restart -> first new meta-step": resumed["times"][0] - restart,
        "one meta-step": statistics.median(b - a for a, b in pairwise(fresh["times"])),
        "killed after meta-step": fresh["steps"][-1],
        "resumed from checkpoint of meta-step": resumed["steps"][0] - 1,
        "checkpoint MB": checkpoint.stat().st_size / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 4, 16],
                        help="tasks_per_step of the one-process runs")
    parser.add_argument("--ddp-tasks", type=int, default=1, help="tasks_per_step of each of 2 DDP processes")
    parser.add_argument("--steps", type=int, default=6, help="meta-steps per run (the first is not timed)")
    parser.add_argument("--unroll", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process")
    parser.add_argument("--smoke", action="store_true", help="every measurement, tiny (for the test suite)")
    args = parser.parse_args()
    if args.smoke:
        args.tasks, args.steps, args.unroll = [1], 3, 2
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}, {args.threads} thread(s) "
          f"per process, unroll {args.unroll}, batch 128, MLP 784-20-10")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("\nmeta-training throughput (optimizee steps/s summed over tasks and processes)")
        runs = [(k, 1) for k in args.tasks] + [(args.ddp_tasks, 2)]
        for tasks, processes in runs:
            rate, per_step, peak = throughput(tasks, processes, args.steps, args.unroll, args.threads, folder)
            label = f"tasks_per_step {tasks:>2} x {processes} process{'es' if processes > 1 else ''}"
            print(f"  {label:<32} {rate:8.1f} steps/s   {per_step:6.2f} s/meta-step   peak {peak:7.0f} MB")
        print("\nresume after SIGKILL (tasks_per_step 1)")
        (folder / "resume").mkdir()
        for name, value in resume_times(args.unroll, args.threads, folder / "resume").items():
            print(f"  {name:<38} {value:8.2f}" if isinstance(value, float) else f"  {name:<38} {value:8d}")


if __name__ == "__main__":
    main()
