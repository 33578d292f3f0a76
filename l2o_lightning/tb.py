"""Read TensorBoard event files back (tensorboard's own reader)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.compat.proto.summary_pb2 import Summary


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of one run directory: ``tag -> [(step, value), ...]`` in step order."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def summary_values(run_dir: str | Path) -> Iterator[tuple[int, Summary.Value]]:
    """``(step, value)`` of every summary value (scalar, histogram, ...) of a run directory's
    event files as written, file by file in name (i.e. creation) order; a record cut off by a
    crash ends its file."""
    for path in _event_files(run_dir):
        yield from _file_values(str(path))


def _event_files(run_dir: str | Path) -> list[Path]:
    return sorted(Path(run_dir).glob("events.out.tfevents.*"))


def _file_values(path: str) -> Iterator[tuple[int, Summary.Value]]:
    for event in LegacyEventFileLoader(path).Load():
        for value in event.summary.value:
            yield event.step, value


def raw_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar event of a run directory's event files as written: ``tag -> [(step,
    value), ...]``. Unlike :func:`read_scalars`, which follows TensorBoard in dropping points a
    restarted run wrote again, duplicates stay visible."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for step, value in summary_values(run_dir):
        if value.HasField("simple_value"):
            scalars.setdefault(value.tag, []).append((step, value.simple_value))
    return scalars


def last_logged_steps(run_dir: str | Path) -> dict[str, int]:
    """The last step at which each tag (scalar, histogram, ...) of a run directory was logged
    (``{}`` for a folder without event files)."""
    last: dict[str, int] = {}
    for step, value in summary_values(run_dir):
        last[value.tag] = max(step, last.get(value.tag, step))
    return last
