"""``l2o-reproduce``: the paper's whole study (meta-training, meta-testing every optimizer
on every optimizee over seeds with all probes) as a plan of ``l2o`` commands, run with a
progress bar, resumable, then reported by :mod:`l2o_lightning.report`."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from l2o_lightning import REPO_ROOT
from l2o_lightning.data import DATA_DIR_ENV
from l2o_lightning.study import Job, Study, checkpoint_path

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
        """The configured duration of one job of each of :data:`~l2o_lightning.study.JOB_KINDS`,
        in seconds."""
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
