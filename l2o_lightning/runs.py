"""A study's TensorBoard logs as data: runs laid out ``LOGDIR/<optimizee>/<optimizer>/seed<k>/``
(what ``l2o-reproduce`` writes under ``OUT/logs``), aggregated over seeds."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from l2o_lightning.tb import read_scalars, summary_values

LAYOUT = "<optimizee>/<optimizer>/seed<k>"
SEED_DIR = re.compile(r"seed\d+")
STUDY_SUBDIR = "logs"  # l2o-reproduce --out OUT logs its runs under OUT/logs
EXAMPLES_SHOWN = 3  # misplaced folders named in a layout error


class StudyLayoutError(ValueError):
    """A folder that is not a study: no runs, or runs outside ``<optimizee>/<optimizer>/seed<k>``."""


@dataclass
class Run:
    """One logged run: where it sits in the study and its scalar series."""

    optimizee: str
    optimizer: str
    seed: str
    path: Path
    scalars: dict[str, list[tuple[int, float]]] = field(repr=False)

    def series(self, tag: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one tag in step order, the last value written for a step
        winning (as in TensorBoard); empty arrays when the run did not log it."""
        latest = dict(self.scalars.get(tag, []))
        steps = sorted(latest)
        return np.array(steps, dtype=int), np.array([latest[s] for s in steps], dtype=float)

    def histograms(self, tag: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """``step -> (edges, counts)`` of one histogram tag: the ``len(counts) + 1`` edges of its
        buckets, the first the smallest value logged (TensorBoard keeps only right edges)."""
        accumulator = EventAccumulator(str(self.path), size_guidance={"histograms": 0})
        accumulator.Reload()
        if tag not in accumulator.Tags()["histograms"]:
            return {}
        return {
            event.step: (np.array([event.histogram_value.min, *event.histogram_value.bucket_limit]),
                         np.array(event.histogram_value.bucket))
            for event in accumulator.Histograms(tag)
        }

    def pooled_histogram_mean(self, prefix: str) -> dict[int, float]:
        """``step -> Σ sum / Σ num`` over every histogram tag starting with ``prefix``, i.e. the
        mean of the values of all those histograms pooled (exact: from the histograms' ``sum``
        and ``num``, not their buckets); only steps at which every such tag was logged; the
        last value written for a (tag, step) wins. ``update_hist/`` gives mean ``|u|`` over all
        parameters, equal to ``update/abs_mean`` where both are logged."""
        latest: dict[tuple[str, int], tuple[float, float]] = {}
        for step, value in summary_values(self.path):
            if value.tag.startswith(prefix) and value.HasField("histo"):
                latest[value.tag, step] = (value.histo.sum, value.histo.num)
        tags = {tag for tag, _ in latest}
        steps = {step for _, step in latest}
        return {
            step: sum(latest[t, step][0] for t in tags) / sum(latest[t, step][1] for t in tags)
            for step in sorted(steps)
            if all((t, step) in latest for t in tags)
        }


def study_root(logdir: str | Path) -> Path:
    """Where the runs of the study at ``logdir`` lie: ``logdir/logs`` when that folder exists
    (``logdir`` is an ``l2o-reproduce --out`` folder, whose ``meta_train/``, ``jobs/`` and
    ``report/`` are not meta-test runs), else ``logdir`` itself."""
    logdir = Path(logdir)
    return logdir / STUDY_SUBDIR if (logdir / STUDY_SUBDIR).is_dir() else logdir


def _run_dirs(root: Path) -> list[Path]:
    return sorted({p.parent.relative_to(root) for p in root.rglob("events.out.tfevents.*")})


def _placed(run_dir: Path, depth: int) -> bool:
    return len(run_dir.parts) == depth and SEED_DIR.fullmatch(run_dir.parts[-1]) is not None


def _not_a_study(root: Path, run_dirs: list[Path]) -> StudyLayoutError:
    """The error naming what is at ``root`` and the layout a study has."""
    if not run_dirs:
        found = "found no event files (events.out.tfevents.*)"
    else:
        misplaced = [d for d in run_dirs if not _placed(d, 3)]
        shown = ", ".join(str(d) for d in misplaced[:EXAMPLES_SHOWN])
        more = f" and {len(misplaced) - EXAMPLES_SHOWN} more" if len(misplaced) > EXAMPLES_SHOWN else ""
        found = (f"found {len(run_dirs)} folder(s) with event files, {len(misplaced)} of them not at "
                 f"{LAYOUT} ({shown}{more}), so nothing was read")
    return StudyLayoutError(
        f"{root} is not a study: {found}. A study has one folder {LAYOUT}/ per run, holding that run's "
        f"event files; l2o-reproduce --out OUT writes one study per protocol, OUT/{STUDY_SUBDIR}/<protocol>/"
        f"{LAYOUT} (pass OUT, OUT/{STUDY_SUBDIR} or OUT/{STUDY_SUBDIR}/<protocol>). To log a run of your "
        "own into a study, use --trainer.logger.init_args.save_dir DIR --trainer.logger.init_args.name "
        "<optimizee>/<optimizer> --trainer.logger.init_args.version seed<k>."
    )


def find_studies(logdir: str | Path) -> dict[str, Path]:
    """The studies at ``logdir`` (see :func:`study_root`): ``{"": root}`` when every run sits at
    ``<optimizee>/<optimizer>/seed<k>``, ``{protocol: root/protocol}`` when every run sits at
    ``<protocol>/<optimizee>/<optimizer>/seed<k>`` (``l2o-reproduce``'s one study per
    protocol); any other layout raises :class:`StudyLayoutError`."""
    root = study_root(logdir)
    run_dirs = _run_dirs(root)
    if run_dirs and all(_placed(d, 3) for d in run_dirs):
        return {"": root}
    if run_dirs and all(_placed(d, 4) for d in run_dirs):
        return {protocol: root / protocol for protocol in sorted({d.parts[0] for d in run_dirs})}
    raise _not_a_study(root, run_dirs)


def discover_runs(logdir: str | Path) -> list[Run]:
    """Every run of the study at ``logdir`` (see :func:`study_root`), named by its path
    ``<optimizee>/<optimizer>/seed<k>``.

    Raises :class:`StudyLayoutError` when there is no run, or when any folder holding event
    files sits elsewhere: runs that cannot be placed are never read, let alone averaged."""
    root = study_root(logdir)
    run_dirs = _run_dirs(root)
    if run_dirs and all(_placed(d, 3) for d in run_dirs):
        return [Run(*d.parts, root / d, read_scalars(root / d)) for d in run_dirs]
    raise _not_a_study(root, run_dirs)


@dataclass(frozen=True)
class Aggregate:
    """Mean and standard deviation over seeds, on the steps every seed logged."""

    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n_seeds: int

    def window_mean(self, first: int, last: int) -> float:
        """Mean of the seed-mean over steps ``first <= step <= last`` (NaN when empty)."""
        mask = (self.steps >= first) & (self.steps <= last)
        return float(self.mean[mask].mean()) if mask.any() else float("nan")

    def at(self, step: int) -> float:
        """Seed-mean at the last logged step ``<= step``; NaN when the runs stopped before ``step``."""
        mask = self.steps <= step
        if not mask.any() or self.steps[-1] < step:
            return float("nan")
        return float(self.mean[mask][-1])


def aggregate(runs: Iterable[Run], tag: str) -> Aggregate | None:
    """Seed mean/std of ``tag`` over ``runs``; ``None`` when no run logged it."""
    series = [run.series(tag) for run in runs]
    series = [(s, v) for s, v in series if len(s)]
    if not series:
        return None
    common = series[0][0]
    for steps, _ in series[1:]:
        common = np.intersect1d(common, steps)
    stacked = np.stack([values[np.isin(steps, common)] for steps, values in series])
    return Aggregate(common, stacked.mean(0), stacked.std(0), len(series))


@dataclass(frozen=True)
class Stat:
    """One number of a cell over its seeds: mean ± standard deviation (population, like the
    figures' bands) of ``n`` per-seed values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        values = np.asarray(list(values), dtype=float)
        return cls(float(values.mean()), float(values.std()), len(values))

    def __str__(self) -> str:
        return f"{self.mean:.3g} ± {self.std:.2g}"


Reduce = Callable[[np.ndarray, np.ndarray], float]  # (steps, values) of one run -> one number


def seed_stat(runs: Iterable[Run], tag: str, reduce: Reduce) -> Stat | None:
    """``reduce(steps, values)`` of ``tag`` in each run (seed), as mean ± std over the seeds
    where it is a number; ``None`` when it is in none (no run, tag not logged, window empty)."""
    values = [reduce(*run.series(tag)) for run in runs]
    values = [v for v in values if not np.isnan(v)]
    return Stat.of(values) if values else None


def select(runs: Iterable[Run], optimizee: str, optimizer: str) -> list[Run]:
    """The seeds of one (optimizee, optimizer) cell."""
    return [r for r in runs if r.optimizee == optimizee and r.optimizer == optimizer]


def histogram_optimizee(runs: list[Run]) -> str:
    """The optimizee of the paper's update histograms (Fig. 9, :data:`~l2o_lightning.steps.HISTOGRAM_STEPS`):
    ``sigmoid`` when the study has sigmoid L2O runs, else ``leaky_relu``."""
    return "sigmoid" if select(runs, "sigmoid", "l2o") else "leaky_relu"
