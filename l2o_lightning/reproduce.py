"""``l2o-reproduce``: the paper's whole study (meta-training, meta-testing every optimizer
on every optimizee over seeds with all probes) as a plan of ``l2o`` commands, run with a
progress bar, resumable, then reported by :mod:`l2o_lightning.report`."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from l2o_lightning import REPO_ROOT
from l2o_lightning.data import DATA_DIR_ENV

FIGURES = ("fig1", "fig2", "fig3", "hist", "lion_sgd")
# figure -> the (optimizee, optimizer) experiments it needs: configs/paper/<optimizee>/<optimizer>.yaml
GRID: dict[str, tuple[tuple[str, str], ...]] = {
    "fig1": tuple((o, x) for o in ("leaky_relu", "bn_relu") for x in ("l2o", "sgd", "adam", "lion")),
    "fig2": tuple(("leaky_relu", x) for x in ("l2o", "l2o_reg_0.1", "l2o_reg_0.5", "l2o_reg_1")),
    "fig3": tuple(("leaky_relu", x) for x in ("l2o", "sgd", "adam", "lion")),
    "hist": tuple(("sigmoid", x) for x in ("l2o", "sgd", "adam", "lion")),
    "lion_sgd": tuple(("sigmoid_100_100", x) for x in ("sgd", "lion", "lion_sgd_0.1", "lion_sgd_0.25",
                                                       "lion_sgd_0.5")),
}
PROTOCOLS = ("paper", "clean")
CLEAN_SEED_OFFSET = 1000  # clean protocol: meta-test seeds and minibatch streams 1000 + k
PRETRAINED = re.compile(r"checkpoint:\s*pretrained:(\S+)")
PAPER_TRAJECTORIES = 1000  # the meta-training budget of configs/paper/meta_train/
JOB_KINDS = ("meta-training", "meta-test")


@dataclass(frozen=True)
class Preset:
    """Budgets of one study; ``None`` keeps the experiment config's own (the paper's)."""

    seeds: int  # meta-test runs per (optimizee, optimizer) and protocol
    trajectories: int | None = None  # meta-training budget per learned optimizer
    test_steps: int | None = None  # optimizee steps per meta-test run
    # estimated minutes of one run on one core of a 2-core machine, until a run of its kind has finished
    train_minutes: float = 0  # one meta-training
    test_minutes: float = 0  # one meta-test (the grid's mean: L2O runs with the paper's probes are slower)
    label: str = ""  # how the report names the study's verdicts

    def estimated_seconds(self) -> dict[str, float]:
        """The configured duration of one job of each of :data:`JOB_KINDS`, in seconds."""
        return {"meta-training": 60 * self.train_minutes, "meta-test": 60 * self.test_minutes}

    def with_trajectories(self, trajectories: int) -> Preset:
        """This preset with another meta-training budget, its duration estimate scaled in proportion."""
        scale = trajectories / (self.trajectories or PAPER_TRAJECTORIES)
        return replace(self, trajectories=trajectories, train_minutes=self.train_minutes * scale)


# the full grid, one run at a time: quick ~1.5 h (6 x 5 + 40 x 1.5 min), paper ~23 h (6 x 2 h + 60 x 11 min)
PRESETS = {
    "quick": Preset(seeds=2, trajectories=40, test_steps=200, train_minutes=5, test_minutes=1.5,
                    label="smoke run (--preset quick: 40 trajectories, 200-step meta-tests, 2 runs)"),
    "paper": Preset(seeds=3, train_minutes=120, test_minutes=11,
                    label="paper budget (1000 trajectories, 1000-step meta-tests)"),
}


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


def experiment_config(optimizee: str, optimizer: str) -> str:
    """The experiment's config, relative to the repository root."""
    return f"configs/paper/{optimizee}/{optimizer}.yaml"


def learned_optimizer_of(config: str) -> str | None:
    """The shipped learned optimizer an experiment config loads (``pretrained:<name>``), which
    ``configs/paper/meta_train/<name>.yaml`` meta-trains; ``None`` for a baseline."""
    match = PRETRAINED.search((REPO_ROOT / config).read_text())
    return match.group(1) if match else None


def meta_train_job(out: Path, learned: str, preset: Preset) -> Job:
    """Meta-train ``configs/paper/meta_train/<learned>.yaml`` (budget: the preset's, else the config's)."""
    name = f"meta_train/{learned}"
    args = ["fit", "-c", f"configs/paper/meta_train/{learned}.yaml", *_logger_args(out, name)]
    if preset.trajectories is not None:
        args += ["--model.init_args.trajectories", str(preset.trajectories)]
    return Job(name, tuple(args))


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


def _logger_args(out: Path, name: str) -> list[str]:
    parent, leaf = name.rsplit("/", 1)
    return ["--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", parent,
            "--trainer.logger.init_args.version", leaf, "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]


def seed_args(protocol: str, run: int) -> list[str]:
    """Seeds of meta-test run ``run``. ``paper``: ``seed_everything run`` and the configs'
    shared seed-0 minibatch sequence (the one meta-training replayed); ``clean``: seed and
    minibatch stream ``1000 + run``, which no meta-training saw."""
    if protocol == "paper":
        return ["--seed_everything", str(run)]
    seed = str(CLEAN_SEED_OFFSET + run)
    return ["--seed_everything", seed, "--data.seed", seed]


def meta_test_job(
    out: Path, preset: Preset, protocol: str, optimizee: str, optimizer: str, run: int,
    checkpoint_of: str | None = None,
) -> Job:
    """Meta-test one experiment config with one run's seeds under ``protocol``."""
    name = f"logs/{protocol}/{optimizee}/{optimizer}/seed{run}"
    args = ["fit", "-c", experiment_config(optimizee, optimizer), *seed_args(protocol, run)]
    if preset.test_steps is not None:
        args += ["--trainer.max_steps", str(preset.test_steps), "--trainer.val_check_interval",
                 str(preset.test_steps)]
    args += _logger_args(out, name)
    if checkpoint_of:
        args += ["--optimizer.init_args.checkpoint", str(checkpoint_path(out, checkpoint_of))]
    return Job(name, tuple(args), checkpoint_of)


def plan(
    preset: Preset, out: Path, seeds: int | None = None, only: Iterable[str] = FIGURES,
    protocols: Iterable[str] = ("paper",), pretrained: bool = False,
) -> list[Job]:
    """Every job of the study for the figures in ``only`` and the ``protocols``, meta-training
    first (none with ``pretrained``: the configs' shipped learned optimizers), no duplicates."""
    only, protocols = set(only), list(protocols)
    unknown = (only - set(FIGURES)) | (set(protocols) - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"unknown figure(s) or protocol(s) {sorted(unknown)}; choose figures from "
                         f"{', '.join(FIGURES)} and protocols from {', '.join(PROTOCOLS)}")
    experiments = dict.fromkeys(e for figure in FIGURES if figure in only for e in GRID[figure])
    train: dict[str, Job] = {}
    tests: list[Job] = []
    for protocol in protocols:
        for run in range(seeds or preset.seeds):
            for optimizee, optimizer in experiments:
                learned = learned_optimizer_of(experiment_config(optimizee, optimizer))
                trained_by = None
                if learned and not pretrained:
                    trained_by = train.setdefault(learned, meta_train_job(out, learned, preset)).name
                tests.append(meta_test_job(out, preset, protocol, optimizee, optimizer, run, trained_by))
    return [*train.values(), *tests]


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


def without_missing_pretrained(jobs: list[Job]) -> tuple[list[Job], set[str]]:
    """The jobs whose shipped learned optimizer exists, and the names of those that do not."""
    from l2o_lightning import pretrained

    shipped, kept, missing = set(pretrained.available()), [], set()
    for job in jobs:
        learned = learned_optimizer_of(job.args[job.args.index("-c") + 1])
        if learned and learned not in shipped:
            missing.add(learned)
        else:
            kept.append(job)
    return kept, missing


def report(out: Path, protocols: list[str], preset: Preset, only: Iterable[str] = FIGURES) -> None:
    """One report per protocol under ``out/report/<protocol>`` (the figures in ``only``) and,
    with both, their verdicts side by side in ``out/report/protocols.md``."""
    from l2o_lightning.report import build_report, write_protocol_comparison
    from l2o_lightning.runs import StudyLayoutError

    verdicts = {}
    for protocol in protocols:
        label = f"{protocol} protocol, {preset.label}"
        try:
            verdicts[protocol] = build_report(out / "logs" / protocol, out / "report" / protocol, label, only)
        except StudyLayoutError as err:  # e.g. no run of this protocol finished
            print(f"no report for the {protocol} protocol: {err}", file=sys.stderr)
            continue
        print(f"\n{label}:")
        for verdict in verdicts[protocol]:
            print(verdict)
    if len(verdicts) > 1:
        write_protocol_comparison(verdicts, out / "report" / "protocols.md")
    print(f"report: {out / 'report'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="l2o-reproduce", description=__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--out", default="reproduce", help="study directory (logs, checkpoints, report)")
    parser.add_argument("--seeds", type=int, default=None, help="meta-test runs (default: the preset's)")
    parser.add_argument("--only", default=",".join(FIGURES),
                        help=f"comma-separated subset of: {', '.join(FIGURES)}")
    parser.add_argument("--protocol", choices=[*PROTOCOLS, "both"], default="paper",
                        help="paper: the original's shared seed-0 minibatch sequence and seeds 0..; clean: "
                             "fresh streams and seeds 1000.. no meta-training saw; both: each, side by side")
    parser.add_argument("--pretrained", action="store_true",
                        help="meta-test the shipped learned optimizers (pretrained:<name>) instead of "
                             "meta-training them")
    parser.add_argument("--trajectories", type=int, default=None,
                        help="meta-training budget per learned optimizer (default: the preset's)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time, each in its own one-thread process (e.g. the core count)")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    if args.trajectories is not None:
        preset = preset.with_trajectories(args.trajectories)
    if not (REPO_ROOT / "configs").is_dir():
        parser.error(
            f"the study runs the repository's configs/, which is not at {REPO_ROOT / 'configs'}: install "
            "l2o_lightning from a clone with `pip install -e .` and run l2o-reproduce there."
        )
    if os.environ.get(DATA_DIR_ENV):  # the runs start in REPO_ROOT: keep a relative data root valid
        os.environ[DATA_DIR_ENV] = str(Path(os.environ[DATA_DIR_ENV]).expanduser().resolve())
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # small ops: threads spin against each other
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out = Path(args.out).resolve()
    protocols = list(PROTOCOLS) if args.protocol == "both" else [args.protocol]
    only = [f for f in args.only.split(",") if f]
    try:
        jobs = plan(preset, out, args.seeds, only, protocols, pretrained=args.pretrained)
    except ValueError as err:
        parser.error(str(err))
    if args.pretrained:
        jobs, missing = without_missing_pretrained(jobs)
        if missing:
            print(f"not shipped, so not meta-tested: {', '.join(sorted(missing))} (meta-train them with "
                  "configs/paper/meta_train/<name>.yaml, or run without --pretrained)", file=sys.stderr)
    study, parallel = Study(out, preset.estimated_seconds()), max(1, args.jobs)
    todo = sum(not study.is_done(job) for job in jobs)
    print(f"l2o-reproduce --preset {args.preset} --protocol {args.protocol}: {len(jobs)} runs "
          f"({todo} to do: {study.time_left(jobs, parallel)} with {parallel} at a time on a 2-core "
          f"machine); results in {out}; commands run from {REPO_ROOT}")
    failed = study.run(jobs, parallel=parallel)
    report(out, protocols, preset, only)
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(j.name for j in failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
