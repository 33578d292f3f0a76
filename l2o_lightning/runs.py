"""A study's TensorBoard logs as data: runs laid out ``LOGDIR/<optimizee>/<optimizer>/<seed>/``
(what ``l2o-reproduce`` writes), aggregated over seeds."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from l2o_lightning.tb import read_scalars


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
        """``step -> (bucket_right_edges, counts)`` of one histogram tag."""
        accumulator = EventAccumulator(str(self.path), size_guidance={"histograms": 0})
        accumulator.Reload()
        if tag not in accumulator.Tags()["histograms"]:
            return {}
        return {
            event.step: (np.array(event.histogram_value.bucket_limit), np.array(event.histogram_value.bucket))
            for event in accumulator.Histograms(tag)
        }


def discover_runs(logdir: str | Path) -> list[Run]:
    """Every run directory under ``logdir`` (one holding an event file), named by its path:
    ``<optimizee>/<optimizer...>/<seed>``; shallower directories are skipped."""
    logdir = Path(logdir)
    runs = []
    for run_dir in sorted({p.parent for p in logdir.rglob("events.out.tfevents.*")}):
        parts = run_dir.relative_to(logdir).parts
        if len(parts) < 3:
            continue
        runs.append(Run(parts[0], "/".join(parts[1:-1]), parts[-1], run_dir, read_scalars(run_dir)))
    return runs


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


def select(runs: Iterable[Run], optimizee: str, optimizer: str) -> list[Run]:
    """The seeds of one (optimizee, optimizer) cell."""
    return [r for r in runs if r.optimizee == optimizee and r.optimizer == optimizer]
