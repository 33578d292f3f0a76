"""Read TensorBoard event files back (tensorboard's own reader)."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of one run directory: ``tag -> [(step, value), ...]`` in step order."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }
