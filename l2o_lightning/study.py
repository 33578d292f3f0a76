"""Running ``l2o-reproduce``'s jobs: each ``l2o`` invocation of the study, done once
(resumable), with the time left projected from the runs finished so far."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from l2o_lightning import REPO_ROOT

JOB_KINDS = ("meta-training", "meta-test")


@dataclass(frozen=True)
class Job:
    """One ``l2o`` invocation of the study.

    Attributes:
        name: unique relative path; meta-test jobs are
            ``logs/<protocol>/<optimizee>/<optimizer>/seed<k>``.
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


def job_kind(job: Job) -> str:
    """Which of :data:`JOB_KINDS` a job is: jobs of one kind predict each other's duration."""
    return "meta-training" if job.name.startswith("meta_train/") else "meta-test"


def projected_seconds(
    remaining: Iterable[Job], durations: Mapping[str, Sequence[float]], estimates: Mapping[str, float],
    parallel: int = 1,
) -> float | None:
    """The wall-clock seconds the ``remaining`` jobs should take, ``parallel`` at a time: each
    job costs the mean of the ``durations`` (seconds) of the finished jobs of its
    :func:`job_kind`, or while none has finished, the kind's configured ``estimates`` (seconds);
    ``None`` when a kind has neither.

    >>> jobs = [Job("meta_train/a", ()), Job("logs/x/sgd/seed0", ()), Job("logs/x/lion/seed0", ())]
    >>> projected_seconds(jobs, {"meta-test": [10.0, 30.0]}, {"meta-training": 600.0, "meta-test": 99.0})
    640.0
    """
    costs = [
        statistics.fmean(durations[kind]) if durations.get(kind) else estimates.get(kind)
        for kind in map(job_kind, remaining)
    ]
    return None if None in costs else sum(costs) / parallel


def format_duration(seconds: float) -> str:
    """A duration as people read it: seconds under a minute, else whole minutes (and hours).

    >>> format_duration(7500), format_duration(420), format_duration(20.4)
    ('2 h 05 min', '7 min', '20 s')
    """
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def checkpoint_path(out: Path, meta_train: str) -> Path:
    """Where a finished meta-training job leaves the checkpoint meta-tests load."""
    return out / meta_train / "l2o.ckpt"


def publish_best_checkpoint(out: Path, meta_train: str) -> None:
    """Copy the meta-training run's best checkpoint (``best-step<N>.ckpt``: the epoch of lowest
    meta-training loss, else ``last.ckpt``) to :func:`checkpoint_path`."""
    folder = out / meta_train / "checkpoints"
    candidates = sorted(folder.glob("best-step*.ckpt")) or sorted(folder.glob("last.ckpt"))
    if candidates:
        shutil.copyfile(candidates[-1], checkpoint_path(out, meta_train))


class Study:
    """Runs a plan under ``out``: a job is done when the first line of ``jobs/<name>.done`` is
    its fingerprint (the second, its duration in seconds). An unfinished meta-training resumes
    from its ``last.ckpt``; any other unfinished job's directory is wiped and the job rerun, so no
    run is logged twice. The progress bar's time left is :func:`projected_seconds` from the
    durations of the runs finished so far (this study's earlier sessions' too) and ``estimates``
    (seconds per job of each kind)."""

    def __init__(self, out: Path, estimates: Mapping[str, float] | None = None) -> None:
        self.out = out
        self.estimates = dict(estimates or {})

    def _marker(self, job: Job) -> Path:
        return self.out / "jobs" / f"{job.name}.done"

    def _marker_lines(self, job: Job) -> list[str]:
        marker = self._marker(job)
        return marker.read_text().split() if marker.exists() else []

    def is_done(self, job: Job) -> bool:
        return self._marker_lines(job)[:1] == [job.fingerprint]

    def durations(self, jobs: Iterable[Job]) -> dict[str, list[float]]:
        """The recorded durations (seconds) of the done ``jobs``, by :func:`job_kind`."""
        durations: dict[str, list[float]] = {kind: [] for kind in JOB_KINDS}
        for job in jobs:
            lines = self._marker_lines(job)
            if self.is_done(job) and len(lines) > 1:
                durations[job_kind(job)].append(float(lines[1]))
        return durations

    def time_left(self, jobs: Sequence[Job], parallel: int = 1) -> str:
        """The projected time the ``jobs`` not done yet take, in words (``'about 2 h 05 min'``)."""
        remaining = [job for job in jobs if not self.is_done(job)]
        seconds = projected_seconds(remaining, self.durations(jobs), self.estimates, parallel)
        return "unknown" if seconds is None else f"about {format_duration(seconds)}"

    def run(self, jobs: list[Job], execute=None, parallel: int = 1) -> list[Job]:
        """Run every job not done yet (printing its command), ``parallel`` at a time (each
        meta-test once its meta-training is done); returns the jobs that failed."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        execute = execute or (_run_l2o if parallel == 1 else _run_l2o_subprocess)
        failed: list[Job] = []
        # tqdm's own projection would take a meta-test for as long as a meta-training
        bar = tqdm(total=len(jobs), desc="study", file=sys.stdout,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} runs [{elapsed}{postfix}]")

        def show_time_left(still_to_run: list[Job]) -> None:
            bar.set_postfix_str(f"time left {self.time_left(still_to_run, parallel)}", refresh=False)

        show_time_left(jobs)
        trainings = [job for job in jobs if job_kind(job) == "meta-training"]
        tests = [job for job in jobs if job_kind(job) == "meta-test"]
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            mapper = map if parallel == 1 else pool.map  # one at a time: in this thread, in order
            try:
                for phase in (trainings, tests):  # meta-tests load the trainings' checkpoints
                    done = mapper(lambda job: self._run_one(job, execute, bar), phase)
                    for job, ok in zip(phase, done, strict=True):
                        if not ok:
                            failed.append(job)
                        show_time_left([job for job in jobs if job not in failed])  # failed: not rerun now
                        bar.update()
            except BaseException:  # an interrupted study starts nothing more
                pool.shutdown(cancel_futures=True)
                raise
        bar.close()
        return failed

    def _run_one(self, job: Job, execute, bar) -> bool:
        """Run one job unless it is done; whether it is done now."""
        if self.is_done(job):
            return True
        if job.checkpoint_of and not checkpoint_path(self.out, job.checkpoint_of).exists():
            return False
        args = list(job.args)
        partial = self.out / job.name / "checkpoints" / "last.ckpt"
        if job.name.startswith("meta_train/") and partial.exists():
            args += ["--ckpt_path", str(partial)]  # an interrupted meta-training resumes
        else:
            shutil.rmtree(self.out / job.name, ignore_errors=True)
        bar.write(f"$ l2o {shlex.join(args)}")
        started = time.perf_counter()
        if execute(args) != 0:
            bar.write(f"  FAILED: {job.name}")
            return False
        if job.name.startswith("meta_train/"):
            publish_best_checkpoint(self.out, job.name)
        seconds = time.perf_counter() - started
        marker = self._marker(job)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{job.fingerprint}\n{seconds:.1f}\n")
        bar.write(f"  done in {format_duration(seconds)}: {job.name}")
        return True


def _run_l2o_subprocess(args: list[str]) -> int:
    """Run ``l2o`` in its own process from :data:`REPO_ROOT` (one thread; its output to the
    run's ``l2o.log``); its exit status."""
    save_dir = Path(args[args.index("--trainer.logger.init_args.save_dir") + 1])
    name = args[args.index("--trainer.logger.init_args.name") + 1]
    version = args[args.index("--trainer.logger.init_args.version") + 1]
    log = save_dir / "jobs" / name / f"{version}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with log.open("w") as output:
        command = [sys.executable, "-m", "l2o_lightning.cli", *args]
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    return done.returncode


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
