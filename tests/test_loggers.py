"""ResumingTensorBoardLogger: a run resumed into its version folder writes no point twice."""

from __future__ import annotations

from l2o_lightning.loggers import ResumingTensorBoardLogger
from l2o_lightning.tb import raw_scalars, summary_values


def write(logger: ResumingTensorBoardLogger, steps: range) -> None:
    """A scalar and a histogram at every step of ``steps`` (value: the step)."""
    for step in steps:
        logger.log_metrics({"loss": float(step)}, step=step)
        logger.experiment.add_histogram_raw(
            "hist", min=step, max=step, num=3, sum=3.0 * step, sum_squares=3.0 * step**2,
            bucket_limits=[step + 1.0], bucket_counts=[3], global_step=step,
        )
    logger.finalize("success")


def test_a_resumed_run_continues_each_curve_without_duplicates(tmp_path):
    write(ResumingTensorBoardLogger(tmp_path, name="run", version=0), range(5))  # interrupted after step 4
    write(ResumingTensorBoardLogger(tmp_path, name="run", version=0), range(3, 8))  # resumed from step 3
    run = tmp_path / "run" / "version_0"
    assert raw_scalars(run)["loss"] == [(step, float(step)) for step in range(8)]
    assert [step for step, value in summary_values(run) if value.tag == "hist"] == list(range(8))


def test_a_new_version_is_written_in_full(tmp_path):
    write(ResumingTensorBoardLogger(tmp_path, name="run"), range(5))
    write(ResumingTensorBoardLogger(tmp_path, name="run"), range(3))
    assert [step for step, _ in raw_scalars(tmp_path / "run" / "version_1")["loss"]] == [0, 1, 2]
