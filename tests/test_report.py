"""``l2o-report`` on event files of real short runs: every figure, summary numbers equal to
those computed directly from the event files, and the update sizes the verdicts read from the
histograms equal to the logged ``update/abs_mean``."""

import csv
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from l2o_lightning.report import main as report_main
from l2o_lightning.runs import discover_runs

pytestmark = pytest.mark.slow  # real training runs

FIGURE_FILES = ["fig1_symmetry.png", "fig2_regularization.png", "fig3_tail_covariance.png",
                "fig_histograms.png", "fig_lion_sgd.png"]


@pytest.fixture(scope="module")
def study(tmp_path_factory, mnist_dir):
    from conftest import REPO

    from l2o_lightning.cli import main

    root = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        patch.setattr("sys.argv", ["l2o"])
        for optimizer in ("sgd", "adam"):
            for seed in (0, 1):
                main(["fit", "-c", "configs/meta_test/leaky_relu.yaml",
                      "-c", f"configs/optimizers/{optimizer}.yaml", "-c", "configs/probes/all.yaml",
                      "--trainer.max_steps", "30",
                      "--trainer.val_check_interval", "30", "--seed_everything", str(seed),
                      "--trainer.logger.init_args.save_dir", str(root),
                      "--trainer.logger.init_args.name", f"leaky_relu/{optimizer}",
                      "--trainer.logger.init_args.version", f"seed{seed}",
                      "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])
    return root


def _direct(run_dir, tag):
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def test_report_writes_every_figure_and_summary_numbers_match_event_files(study, tmp_path, capsys):
    report_main([str(study), "--out", str(tmp_path)])
    for name in FIGURE_FILES:  # the data they draw: tests/test_verdicts.py
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "summary.md").read_text().startswith(f"# Summary: {study}\n")
    with open(tmp_path / "summary.csv") as f:
        rows = {row["optimizer"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"sgd", "adam"}
    for optimizer, row in rows.items():
        assert row["seeds"] == "2"
        runs = [study / "leaky_relu" / optimizer / f"seed{s}" for s in (0, 1)]
        losses = [dict(_direct(r, "train/loss")) for r in runs]
        seed_mean = [sum(seed[s] for seed in losses) / 2 for s in range(30)]
        assert float(row["loss_mean_1_200"]) == pytest.approx(sum(seed_mean) / 30, rel=1e-6)
        alphas = [[v for _, v in _direct(r, "tail_index/update")] for r in runs]
        seed_mean = [sum(pair) / 2 for pair in zip(*alphas, strict=True)]
        assert float(row["alpha_update"]) == pytest.approx(sum(seed_mean) / len(seed_mean), rel=1e-6)
        rescale = [dict(_direct(r, "symmetry/rescale/update/abs_sum")) for r in runs]
        steps = sorted(rescale[0])
        expected = sum((rescale[0][s] + rescale[1][s]) / 2 for s in steps) / len(steps)
        assert float(row["rescale_dev_1_100"]) == pytest.approx(expected, rel=1e-6)
        assert math.isnan(float(row["loss_at_200"]))  # the runs stopped at step 30
    out = capsys.readouterr().out
    assert "not measured" in out  # no L2O runs in this study: its claims cannot be judged


def test_update_sizes_from_the_histograms_equal_the_logged_abs_mean(study):
    for run in discover_runs(study):
        pooled = run.pooled_histogram_mean("update_hist/")
        # every_n_steps 10: k = 1, 10, 20, 30; histograms also at the paper's k = 5 (global_step k - 1)
        assert sorted(pooled) == [0, 4, 9, 19, 29]
        logged = dict(_direct(run.path, "update/abs_mean"))
        assert sorted(logged) == [0, 9, 19, 29]
        for step, value in logged.items():
            assert pooled[step] == pytest.approx(value, rel=1e-6)
