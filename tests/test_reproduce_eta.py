"""``l2o-reproduce``'s time left: each job not done costs the mean duration of the finished runs
of its kind (meta-training, meta-test), or the preset's estimate while none has finished."""

from __future__ import annotations

import pytest

from l2o_lightning.reproduce import PRESETS, plan
from l2o_lightning.study import Job, Study, format_duration, job_kind, projected_seconds

TRAININGS = [Job(f"meta_train/{name}", ()) for name in ("leaky_relu", "bn_relu")]
TESTS = [Job(f"logs/paper/leaky_relu/{optimizer}/seed0", ())
         for optimizer in ("l2o", "sgd", "adam", "lion", "lion_sgd")]
ESTIMATES = {"meta-training": 1000.0, "meta-test": 10.0}


def test_job_kinds():
    assert {job_kind(job) for job in TRAININGS} == {"meta-training"}
    assert {job_kind(job) for job in TESTS} == {"meta-test"}


def test_each_job_costs_the_mean_of_the_finished_runs_of_its_kind():
    durations = {"meta-training": [3600.0, 4000.0], "meta-test": [60.0, 120.0]}
    one_at_a_time = 2 * 3800 + 5 * 90
    assert projected_seconds([*TRAININGS, *TESTS], durations, ESTIMATES) == one_at_a_time
    assert projected_seconds([*TRAININGS, *TESTS], durations, ESTIMATES, parallel=2) == one_at_a_time / 2


def test_a_meta_test_is_not_projected_from_a_meta_training():
    # one hour-long meta-training finished: the ten meta-tests left still cost a minute each
    durations = {"meta-training": [3600.0], "meta-test": []}
    assert projected_seconds(TESTS * 2, durations, {"meta-test": 60.0}) == 10 * 60


def test_a_kind_with_no_finished_run_costs_its_estimate():
    assert projected_seconds([*TRAININGS, *TESTS], {"meta-test": [30.0]}, ESTIMATES) == 2 * 1000 + 5 * 30
    assert projected_seconds([*TRAININGS, *TESTS], {}, ESTIMATES) == 2 * 1000 + 5 * 10
    assert projected_seconds([], {}, {}) == 0


def test_no_projection_for_a_kind_with_neither_runs_nor_estimate():
    assert projected_seconds(TRAININGS, {"meta-test": [30.0]}, {"meta-test": 10.0}) is None


@pytest.mark.parametrize(("preset", "jobs", "minutes"), [
    ("quick", 6 + 40, 6 * 5 + 40 * 1.5),  # ~1.5 h, as the README says
    ("paper", 6 + 60, 6 * 120 + 60 * 11),  # ~23 h
])
def test_the_presets_estimate_the_full_grid(tmp_path, preset, jobs, minutes):
    grid = plan(PRESETS[preset], tmp_path)
    assert len(grid) == jobs
    assert projected_seconds(grid, {}, PRESETS[preset].estimated_seconds()) == pytest.approx(60 * minutes)


def test_a_pretrained_study_is_projected_without_meta_training(tmp_path):
    grid = plan(PRESETS["paper"], tmp_path, pretrained=True)
    assert projected_seconds(grid, {}, PRESETS["paper"].estimated_seconds()) == pytest.approx(60 * 60 * 11)


def test_another_meta_training_budget_scales_its_estimate():
    assert PRESETS["paper"].with_trajectories(100).train_minutes == pytest.approx(12)
    assert PRESETS["quick"].with_trajectories(80).train_minutes == pytest.approx(10)
    assert PRESETS["quick"].with_trajectories(80).test_minutes == PRESETS["quick"].test_minutes


def test_format_duration():
    assert [format_duration(s) for s in (0, 29.4, 59.4, 59.6, 59 * 60, 3600, 3600 + 5 * 60, 23 * 3600)] == [
        "0 s", "29 s", "59 s", "1 min", "59 min", "1 h 00 min", "1 h 05 min", "23 h 00 min"]


def test_the_study_projects_from_its_recorded_durations(tmp_path):
    jobs = plan(PRESETS["quick"], tmp_path, seeds=1, only=["fig3"])  # 1 meta-training, 4 meta-tests
    study = Study(tmp_path, {"meta-training": 300.0, "meta-test": 60.0})
    assert study.time_left(jobs) == "about 9 min"  # 300 + 4 x 60 s

    def execute(args):
        name = args[args.index("--trainer.logger.init_args.name") + 1]
        if name == "meta_train":
            (tmp_path / name / "leaky_relu" / "checkpoints").mkdir(parents=True)
            (tmp_path / name / "leaky_relu" / "checkpoints" / "last.ckpt").write_text("")
        return 0

    assert study.run(jobs[:2], execute) == []  # the meta-training and one meta-test
    durations = study.durations(jobs)
    assert [len(durations["meta-training"]), len(durations["meta-test"])] == [1, 1]
    # as if the meta-test just run had taken 20 min: the 3 left take an hour, whatever the estimate
    marker = tmp_path / "jobs" / f"{jobs[1].name}.done"
    marker.write_text(f"{jobs[1].fingerprint}\n1200.0\n")
    assert study.time_left(jobs) == "about 1 h 00 min"
    assert study.time_left(jobs, parallel=2) == "about 30 min"


def test_a_done_marker_without_a_duration_still_counts_as_done(tmp_path):
    (job,) = TESTS[:1]
    marker = tmp_path / "jobs" / f"{job.name}.done"
    marker.parent.mkdir(parents=True)
    marker.write_text(job.fingerprint + "\n")  # written before durations were recorded
    study = Study(tmp_path, ESTIMATES)
    assert study.is_done(job)
    assert study.durations([job]) == {"meta-training": [], "meta-test": []}
    assert study.time_left([job, *TESTS[1:]]) == "about 40 s"  # 4 x 10 s
