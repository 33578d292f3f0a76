"""The report's figures on synthetic event files, read back from the axes: the update
histograms (a grid, one legend, the zeros a log axis leaves out noted), fig2 only with β runs,
and only the figures asked for written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from l2o_lightning import figures
from l2o_lightning.report import build_report
from l2o_lightning.report import main as report_main
from l2o_lightning.reproduce import GRID, PRESETS
from l2o_lightning.reproduce import report as reproduce_report
from l2o_lightning.runs import discover_runs
from l2o_lightning.steps import HISTOGRAM_STEPS

HIST_TAG = "update_hist/linears.0.weight"
# optimizer -> global_step -> (edges: the smallest value, then the buckets' right edges; counts)
HISTOGRAMS = {
    "l2o": {0: ([0.0, 1e-3, 1e-2, 1e-1], [3, 5, 2]), 4: ([1e-3, 1e-3, 1e-1], [0, 10])},
    "sgd": {0: ([0.0, 1e-4, 1e-3], [1, 9])},
}


def write_run(folder: Path, scalars: dict[str, list[float]], histograms=None) -> None:
    """Event files with ``scalars`` (tag -> values at steps 0, 1, ...) and ``histograms``
    (step -> (edges, counts)) under :data:`HIST_TAG`."""
    writer = SummaryWriter(str(folder))
    for tag, values in scalars.items():
        for step, value in enumerate(values):
            writer.add_scalar(tag, value, step)
    for step, (edges, counts) in (histograms or {}).items():
        writer.add_histogram_raw(HIST_TAG, min=edges[0], max=edges[-1], num=sum(counts), sum=1.0,
                                 sum_squares=1.0, bucket_limits=edges[1:], bucket_counts=counts,
                                 global_step=step)
    writer.close()


def write_study(root: Path) -> Path:
    """A leaky_relu study at ``root``: a run per optimizer of :data:`HISTOGRAMS`."""
    for optimizer, histograms in HISTOGRAMS.items():
        write_run(root / "leaky_relu" / optimizer / "seed0", {"train/loss": [1.0, 0.5]}, histograms)
    return root


@pytest.fixture
def histogram_study(tmp_path) -> Path:
    return write_study(tmp_path / "study")


def has_no_data_text(ax) -> bool:
    return any(text.get_text() == figures.NO_DATA for text in ax.texts)


def zeros_note(ax) -> str | None:
    notes = [t.get_text() for t in ax.texts if t.get_text().startswith(figures.ZEROS_LEFT_OUT)]
    return notes[0] if notes else None


def test_magnitude_fractions_leave_out_the_zero_bucket_but_count_it():
    edges, fractions, zeros = figures.magnitude_fractions(np.array([0.0, 1e-3, 1e-2, 1e-1]),
                                                          np.array([3, 5, 2]))
    np.testing.assert_array_equal(edges, [1e-3, 1e-2, 1e-1])
    np.testing.assert_allclose(fractions, [0.5, 0.2])  # of all 10 values, the 3 zeros included
    assert zeros == 3
    edges, fractions, zeros = figures.magnitude_fractions(np.array([0.0, 1.0]), np.array([7]))  # all zero
    assert (len(edges), len(fractions), zeros) == (0, 0, 7)


def test_histograms_are_a_grid_with_one_legend_and_the_zeros_noted(histogram_study):
    fig = figures.fig_histograms(discover_runs(histogram_study))
    axes = fig.axes
    assert len(axes) == len(HISTOGRAM_STEPS) == 6
    assert {ax.get_subplotspec().rowspan.start for ax in axes} == {0, 1}  # two rows of three
    assert [ax.get_title() for ax in axes] == [f"step {step}" for step in HISTOGRAM_STEPS]
    assert all(ax.get_legend() is None for ax in axes)
    (legend,) = fig.legends
    assert [text.get_text() for text in legend.get_texts()] == ["l2o", "sgd"]

    step1 = {line.get_label(): line for line in axes[0].lines}  # paper step 1 = global_step 0
    np.testing.assert_array_equal(step1["l2o"].get_xdata(), [1e-3, 1e-2, 1e-1])
    np.testing.assert_allclose(step1["l2o"].get_ydata(), [0.5, 0.2, 0.2])  # the last fraction repeated
    np.testing.assert_array_equal(step1["sgd"].get_xdata(), [1e-4, 1e-3])
    np.testing.assert_allclose(step1["sgd"].get_ydata(), [0.9, 0.9])
    assert axes[0].get_xscale() == "log"
    assert zeros_note(axes[0]) == f"{figures.ZEROS_LEFT_OUT} l2o 3, sgd 1"

    step5 = {line.get_label(): line for line in axes[1].lines}
    assert set(step5) == {"l2o"}  # no zeros: no note
    np.testing.assert_allclose(step5["l2o"].get_ydata(), [0.0, 1.0, 1.0])
    assert zeros_note(axes[1]) is None and not has_no_data_text(axes[1])

    for ax in axes[2:]:  # steps 10, 30, 100, 500 were not logged
        assert has_no_data_text(ax) and not ax.lines


def test_fig2_without_beta_runs_says_no_data(histogram_study):
    axes = figures.fig2_regularization(discover_runs(histogram_study)).axes
    assert all(has_no_data_text(ax) and not ax.lines for ax in axes)


def test_fig2_draws_the_beta_runs_beside_the_others(histogram_study):
    write_run(histogram_study / "leaky_relu" / "l2o_reg_0.5" / "seed0", {"train/loss": [2.0, 1.0]})
    leaky, bn = figures.fig2_regularization(discover_runs(histogram_study)).axes
    drawn = {line.get_label(): line for line in leaky.lines}
    assert set(drawn) == {"l2o", "l2o_reg_0.5", "sgd"}
    np.testing.assert_allclose(drawn["l2o_reg_0.5"].get_ydata(), [2.0, 1.5])  # the 10-step trailing mean
    assert has_no_data_text(bn) and not bn.lines


def test_only_the_figures_asked_for_are_written(histogram_study, tmp_path, capsys):
    out = tmp_path / "report"
    build_report(histogram_study, out, only=["fig1"])
    assert sorted(path.name for path in out.iterdir()) == ["fig1_symmetry.png", "summary.csv", "summary.md"]
    assert "not written" not in capsys.readouterr().out


def test_a_figure_with_nothing_to_draw_is_named_not_skipped_silently(histogram_study, tmp_path, capsys):
    out = tmp_path / "report"
    build_report(histogram_study, out)
    written = {path.name for path in out.glob("*.png")}
    assert written == {file for file, _ in figures.FIGURES.values()} - {"fig_generalization.png"}
    assert ("fig_generalization.png not written: the study has none of the runs it draws "
            "(l2o_lightning.figures.fig_generalization)") in capsys.readouterr().out


def test_l2o_report_only_flag(histogram_study, tmp_path, capsys):
    report_main([str(histogram_study), "--out", str(tmp_path / "r"), "--only", "hist,fig3"])
    assert sorted(path.name for path in (tmp_path / "r").glob("*.png")) == [
        "fig3_tail_covariance.png", "fig_histograms.png"]
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(histogram_study), "--out", str(tmp_path / "r2"), "--only", "fig1,fig9"])
    assert exit_info.value.code == 2
    assert "unknown figure(s) ['fig9']; choose from fig1, fig2" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def test_reproduce_only_fig1_reports_only_fig1(tmp_path):
    write_study(tmp_path / "logs" / "paper")
    reproduce_report(tmp_path, ["paper"], PRESETS["quick"], only=["fig1"])
    assert sorted(p.name for p in (tmp_path / "report" / "paper").glob("*.png")) == ["fig1_symmetry.png"]


def test_every_figure_l2o_reproduce_plans_for_is_a_report_figure():
    assert set(GRID) <= set(figures.FIGURES)
