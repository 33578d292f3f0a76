"""``l2o-reproduce``: the paper's whole study (meta-training, meta-testing every optimizer
on every optimizee over seeds with all probes) as a plan of ``l2o`` commands, run with a
progress bar, resumable, then reported by :mod:`l2o_lightning.report`."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from l2o_lightning import REPO_ROOT
from l2o_lightning.data import DATA_DIR_ENV

FIGURES = ("fig1", "fig2", "fig3", "hist", "lion_sgd", "generalization")
# optimizee name -> meta-test config + overrides (the generalization targets reuse configs)
OPTIMIZEES = {
    "leaky_relu": ("configs/meta_test/leaky_relu.yaml",),
    "bn_relu": ("configs/meta_test/bn_relu.yaml",),
    "sigmoid": ("configs/meta_test/sigmoid.yaml",),
    "relu": ("configs/meta_test/leaky_relu.yaml", "--model.init_args.activation", "relu"),
    "two_layers": ("configs/meta_test/leaky_relu.yaml", "--model.init_args.hidden", "[20, 20]"),
    "wide40": ("configs/meta_test/leaky_relu.yaml", "--model.init_args.hidden", "[40]"),
}
META_TEST_SEED_OFFSET = 1000  # meta-test seeds never coincide with the meta-training seed (0)


@dataclass(frozen=True)
class Preset:
    """Budgets of one study."""

    trajectories: int  # meta-training budget per learned optimizer
    test_steps: int  # optimizee steps per meta-test run
    seeds: int  # meta-test seeds per (optimizee, optimizer)
    probe_every: int  # probe interval in optimizee steps
    betas: tuple[float, ...] = (0.1, 0.5, 1.0)
    lion_weights: tuple[float, ...] = (0.1, 0.25, 0.5)
    minutes: int = 0  # expected duration on 2 CPU cores


PRESETS = {
    "quick": Preset(trajectories=40, test_steps=200, seeds=2, probe_every=10, minutes=25),
    "paper": Preset(trajectories=1000, test_steps=1000, seeds=5, probe_every=10, minutes=600),
}


@dataclass(frozen=True)
class Job:
    """One ``l2o`` invocation of the study.

    Attributes:
        name: unique relative path; meta-test jobs are ``logs/<optimizee>/<optimizer>/<seed>``.
        args: the ``l2o`` arguments.
        checkpoint_of: the meta-training job whose checkpoint ``args`` refer to (``None``: none).
    """

    name: str
    args: tuple[str, ...]
    checkpoint_of: str | None = None

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.name, self.args]).encode()).hexdigest()[:16]

    def command(self) -> str:
        return "l2o " + shlex.join(self.args)


def _beta_label(beta: float) -> str:
    return f"l2o_beta{beta:g}"


def meta_train_job(out: Path, optimizee: str, beta: float, preset: Preset) -> Job:
    """Meta-train an L2O on ``optimizee`` (``leaky_relu``/``bn_relu``), regularized when ``beta > 0``."""
    name = f"meta_train/{optimizee}" + (f"_beta{beta:g}" if beta else "")
    config = f"configs/meta_train/{optimizee}{'_reg' if beta else ''}.yaml"
    args = ["fit", "-c", config, "--model.init_args.trajectories", str(preset.trajectories),
            "--seed_everything", "0", *_logger_args(out, name)]
    if beta:
        args += ["--model.init_args.symmetry_reg.beta", f"{beta:g}"]
    return Job(name, tuple(args))


def checkpoint_path(out: Path, meta_train: str) -> Path:
    """Where a finished meta-training job leaves the checkpoint meta-tests load."""
    return out / meta_train / "l2o.ckpt"


def publish_best_checkpoint(out: Path, meta_train: str) -> None:
    """Copy the meta-training run's best-validation checkpoint (``best-step<N>.ckpt``, else
    ``last.ckpt``) to :func:`checkpoint_path`."""
    folder = out / meta_train / "checkpoints"
    candidates = sorted(folder.glob("best-step*.ckpt")) or sorted(folder.glob("last.ckpt"))
    if candidates:
        shutil.copyfile(candidates[-1], checkpoint_path(out, meta_train))


def _logger_args(out: Path, name: str) -> list[str]:
    parent, leaf = name.rsplit("/", 1)
    return ["--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", parent,
            "--trainer.logger.init_args.version", leaf, "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]


def meta_test_job(
    out: Path, preset: Preset, optimizee: str, label: str, seed: int,
    optimizer_args: Iterable[str], checkpoint_of: str | None = None, probes: bool = True,
) -> Job:
    """Meta-test one optimizer on one optimizee with one seed (probes on when ``probes``)."""
    config, *overrides = OPTIMIZEES[optimizee]
    name = f"logs/{optimizee}/{label}/seed{seed}"
    args = ["fit", "-c", config, *overrides, *optimizer_args]
    if probes:
        args += ["-c", "configs/probes/all.yaml"]
    steps = preset.test_steps
    args += ["--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
             "--seed_everything", str(META_TEST_SEED_OFFSET + seed), *_logger_args(out, name)]
    if checkpoint_of:
        args += ["--optimizer.checkpoint", str(checkpoint_path(out, checkpoint_of))]
    return Job(name, tuple(args), checkpoint_of)


def _baseline(name: str) -> tuple[str, ...]:
    return ("-c", f"configs/optimizers/{name}.yaml")


def plan(preset: Preset, out: Path, seeds: int | None = None, only: Iterable[str] = FIGURES) -> list[Job]:
    """Every job of the study for the figures in ``only``, meta-training first, no duplicates."""
    only = set(only)
    unknown = only - set(FIGURES)
    if unknown:
        raise ValueError(f"unknown figure(s) {sorted(unknown)} in --only; choose from {', '.join(FIGURES)}")
    n_seeds = seeds or preset.seeds
    l2o = _baseline("l2o")
    train: dict[str, Job] = {}
    tests: dict[str, Job] = {}

    def learned(optimizee: str, beta: float = 0.0) -> str:
        job = meta_train_job(out, optimizee, beta, preset)
        train.setdefault(job.name, job)
        return job.name

    def add(job: Job) -> None:
        tests.setdefault(job.name, job)

    def grid(optimizee: str, optimizers: Iterable[str], n: int = n_seeds, probes: bool = True) -> None:
        for seed in range(n):
            for name in optimizers:
                if name == "l2o":
                    add(meta_test_job(out, preset, optimizee, "l2o", seed, l2o, learned(optimizee), probes))
                else:
                    add(meta_test_job(out, preset, optimizee, name, seed, _baseline(name), probes=probes))

    if only & {"fig1", "fig3", "hist"}:
        for optimizee in ("leaky_relu", "bn_relu") if "fig1" in only else ("leaky_relu",):
            grid(optimizee, ("l2o", "sgd", "adam", "lion"))
    if "fig2" in only:
        grid("leaky_relu", ("l2o", "sgd", "adam", "lion"))
        for beta in preset.betas:
            for seed in range(n_seeds):
                add(meta_test_job(out, preset, "leaky_relu", _beta_label(beta), seed, l2o,
                                  learned("leaky_relu", beta)))
    if "lion_sgd" in only:
        grid("leaky_relu", ("sgd", "lion"))
        for weight in preset.lion_weights:
            for seed in range(n_seeds):
                add(meta_test_job(out, preset, "leaky_relu", f"lion_sgd_{weight:g}", seed,
                                  (*_baseline("lion_sgd"), "--optimizer.lion_weight", f"{weight:g}")))
    if "generalization" in only:
        for target in OPTIMIZEES:
            grid(target, ("adam",), n=1, probes=False)
            for source in ("leaky_relu", "bn_relu"):
                label = "l2o" if source == target else f"l2o_from_{source}"
                if f"logs/{target}/{label}/seed0" not in tests:
                    add(meta_test_job(out, preset, target, label, 0, l2o, learned(source), probes=False))
    return [*train.values(), *tests.values()]


class Study:
    """Runs a plan under ``out``: a job is done when ``jobs/<name>.done`` holds its fingerprint.
    An unfinished meta-training resumes from its ``last.ckpt``; any other unfinished job's
    directory is wiped and the job rerun, so no run is logged twice."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def _marker(self, job: Job) -> Path:
        return self.out / "jobs" / f"{job.name}.done"

    def is_done(self, job: Job) -> bool:
        marker = self._marker(job)
        return marker.exists() and marker.read_text().strip() == job.fingerprint

    def run(self, jobs: list[Job], execute=None) -> list[Job]:
        """Run every job not done yet (printing its command); returns the jobs that failed."""
        from tqdm import tqdm

        execute = execute or _run_l2o
        failed: list[Job] = []
        bar = tqdm(jobs, desc="study", unit="run", file=sys.stdout)
        for job in bar:
            if self.is_done(job):
                continue
            if job.checkpoint_of and not checkpoint_path(self.out, job.checkpoint_of).exists():
                failed.append(job)
                continue
            args = list(job.args)
            partial = self.out / job.name / "checkpoints" / "last.ckpt"
            if job.name.startswith("meta_train/") and partial.exists():
                args += ["--ckpt_path", str(partial)]  # an interrupted meta-training resumes
            else:
                shutil.rmtree(self.out / job.name, ignore_errors=True)
            bar.write(f"$ l2o {shlex.join(args)}")
            started = time.perf_counter()
            if execute(args) == 0:
                if job.name.startswith("meta_train/"):
                    publish_best_checkpoint(self.out, job.name)
                marker = self._marker(job)
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(job.fingerprint + "\n")
                bar.write(f"  done in {time.perf_counter() - started:.0f} s")
            else:
                bar.write(f"  FAILED: {job.name}")
                failed.append(job)
        return failed


def _run_l2o(args: list[str]) -> int:
    """Run ``l2o`` in this process (saves the interpreter start-up per run) from
    :data:`REPO_ROOT`, where the ``configs/...`` paths of the study's commands lie; its exit status."""
    from l2o_lightning.cli import main

    argv, sys.argv = sys.argv, ["l2o"]  # LightningCLI warns when it sees our own arguments
    cwd = Path.cwd()
    os.chdir(REPO_ROOT)
    try:
        main(args)
    except SystemExit as stop:
        return int(stop.code or 0)
    finally:
        sys.argv = argv
        os.chdir(cwd)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="l2o-reproduce", description=__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--out", default="reproduce", help="study directory (logs, checkpoints, report)")
    parser.add_argument("--seeds", type=int, default=None, help="meta-test seeds (default: the preset's)")
    parser.add_argument("--only", default=",".join(FIGURES),
                        help=f"comma-separated subset of: {', '.join(FIGURES)}")
    parser.add_argument("--trajectories", type=int, default=None,
                        help="meta-training budget per learned optimizer (default: the preset's)")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    if args.trajectories is not None:
        preset = replace(preset, trajectories=args.trajectories)
    if not (REPO_ROOT / "configs").is_dir():
        parser.error(
            f"the study runs the repository's configs/, which is not at {REPO_ROOT / 'configs'}: install "
            "l2o_lightning from a clone with `pip install -e .` and run l2o-reproduce there."
        )
    if os.environ.get(DATA_DIR_ENV):  # the runs start in REPO_ROOT: keep a relative data root valid
        os.environ[DATA_DIR_ENV] = str(Path(os.environ[DATA_DIR_ENV]).expanduser().resolve())
    out = Path(args.out).resolve()
    try:
        jobs = plan(preset, out, args.seeds, [f for f in args.only.split(",") if f])
    except ValueError as err:
        parser.error(str(err))
    study = Study(out)
    todo = sum(not study.is_done(job) for job in jobs)
    print(f"l2o-reproduce --preset {args.preset}: {len(jobs)} runs ({todo} to do), "
          f"expected about {preset.minutes} min for the full study on 2 CPU cores; results in {out}; "
          f"commands run from {REPO_ROOT}")
    failed = study.run(jobs)
    from l2o_lightning.report import build_report

    for verdict in build_report(out / "logs", out / "report"):
        print(verdict)
    print(f"report: {out / 'report'}")
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(j.name for j in failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
