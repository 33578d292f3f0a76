"""The study plan is a pure function of the preset; an interrupted study resumes."""

from pathlib import Path

import pytest
from conftest import REPO

from l2o_lightning.reproduce import FIGURES, GRID, PRESETS, PROTOCOLS, plan
from l2o_lightning.study import Study, _run_l2o, _run_l2o_subprocess, checkpoint_path


def _configs(job):
    return [job.args[i + 1] for i, a in enumerate(job.args) if a == "-c"]


def _value(job, flag):
    return job.args[job.args.index(flag) + 1]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_plan_is_complete_consistent_and_pure(preset, tmp_path):
    jobs = plan(PRESETS[preset], tmp_path, protocols=PROTOCOLS)
    assert jobs == plan(PRESETS[preset], tmp_path, protocols=PROTOCOLS)
    names = [job.name for job in jobs]
    assert len(names) == len(set(names))
    trained = {job.name for job in jobs if job.name.startswith("meta_train/")}
    assert trained == {"meta_train/leaky_relu", "meta_train/bn_relu", "meta_train/sigmoid",
                       "meta_train/leaky_relu_reg_0.1", "meta_train/leaky_relu_reg_0.5",
                       "meta_train/leaky_relu_reg_1"}
    first_test = next(i for i, job in enumerate(jobs) if job.name.startswith("logs/"))
    assert all(job.name.startswith("meta_train/") for job in jobs[:first_test])
    for job in jobs:
        assert all((REPO / config).exists() for config in _configs(job)), job.command()
        if job.checkpoint_of:
            assert job.checkpoint_of in trained
            expected = str(checkpoint_path(tmp_path, job.checkpoint_of))
            assert _value(job, "--optimizer.init_args.checkpoint") == expected
    for protocol in PROTOCOLS:
        runs = {n.rsplit("/", 1)[1] for n in names if n.startswith(f"logs/{protocol}/leaky_relu/adam/")}
        assert len(runs) == PRESETS[preset].seeds
    cells = {tuple(n.split("/")[2:4]) for n in names if n.startswith("logs/paper/")}
    assert cells == {cell for figure in GRID.values() for cell in figure}
    assert {("bn_relu", "l2o"), ("sigmoid", "l2o"), ("leaky_relu", "l2o_reg_1"),
            ("sigmoid_100_100", "lion_sgd_0.25")} <= cells


def test_protocols_differ_only_in_seeds_and_minibatch_stream(tmp_path):
    jobs = {job.name: job for job in plan(PRESETS["paper"], tmp_path, protocols=PROTOCOLS)}
    paper, clean = jobs["logs/paper/leaky_relu/adam/seed2"], jobs["logs/clean/leaky_relu/adam/seed2"]
    assert _configs(paper) == _configs(clean) == ["configs/paper/leaky_relu/adam.yaml"]
    assert _value(paper, "--seed_everything") == "2" and "--data.seed" not in paper.args  # the config's 0
    assert _value(clean, "--seed_everything") == _value(clean, "--data.seed") == "1002"


def test_paper_preset_keeps_the_configs_budgets_and_pretrained_skips_meta_training(tmp_path):
    paper = PRESETS["paper"]
    assert paper.seeds >= 3 and paper.trajectories is None and paper.test_steps is None
    jobs = plan(paper, tmp_path)
    assert not any("--trainer.max_steps" in job.args or "--model.init_args.trajectories" in job.args
                   for job in jobs)
    shipped = plan(paper, tmp_path, pretrained=True)
    assert not any(job.name.startswith("meta_train/") or job.checkpoint_of for job in shipped)
    assert {job.name for job in shipped} == {job.name for job in jobs if job.name.startswith("logs/")}
    quick = plan(PRESETS["quick"], tmp_path)
    trainings = [job for job in quick if job.name.startswith("meta_train/")]
    assert trainings and all(_value(job, "--model.init_args.trajectories") == "40" for job in trainings)


def test_only_restricts_the_plan_and_rejects_unknown_figures(tmp_path):
    jobs = plan(PRESETS["quick"], tmp_path, seeds=1, only=["lion_sgd"])
    assert {job.name.split("/")[3] for job in jobs} == {"sgd", "lion", "lion_sgd_0.1", "lion_sgd_0.25",
                                                         "lion_sgd_0.5"}
    assert not any(job.checkpoint_of for job in jobs)
    with pytest.raises(ValueError, match="fig9.*choose figures from"):
        plan(PRESETS["quick"], tmp_path, only=["fig9"])
    with pytest.raises(ValueError, match="fresh"):
        plan(PRESETS["quick"], tmp_path, protocols=["fresh"])
    assert set(FIGURES) >= {"fig1", "fig2", "fig3"}


def test_interrupted_study_resumes_without_redoing_finished_runs(tmp_path):
    jobs = plan(PRESETS["quick"], tmp_path, seeds=1, only=["fig1"])
    executed: list[str] = []

    def execute(args, interrupt_at=None):
        name = _name_of(args)
        if len(executed) == interrupt_at:
            (tmp_path / name).mkdir(parents=True)  # a half-written run
            raise KeyboardInterrupt
        executed.append(name)
        (tmp_path / name).mkdir(parents=True)
        if name.startswith("meta_train/"):
            (tmp_path / name / "checkpoints").mkdir()
            (tmp_path / name / "checkpoints" / "best-step99.ckpt").write_text(name)
        return 0

    with pytest.raises(KeyboardInterrupt):
        Study(tmp_path).run(jobs, lambda args: execute(args, interrupt_at=3))
    first = list(executed)
    assert first == [job.name for job in jobs[:3]]
    failed = Study(tmp_path).run(jobs, execute)
    assert failed == []
    assert executed[len(first):] == [job.name for job in jobs[3:]]
    assert Study(tmp_path).run(jobs, lambda args: pytest.fail("nothing left to run")) == []
    assert checkpoint_path(tmp_path, "meta_train/bn_relu").read_text() == "meta_train/bn_relu"


def test_parallel_study_runs_every_meta_test_after_all_meta_trainings(tmp_path):
    import threading
    import time

    jobs = plan(PRESETS["quick"], tmp_path, seeds=1, only=["fig1"])
    events, running, lock = [], [0], threading.Lock()

    def execute(args):
        name = _name_of(args)
        with lock:
            running[0] += 1
            events.append(("start", name, running[0]))
        time.sleep(0.01)
        if name.startswith("meta_train/"):
            (tmp_path / name / "checkpoints").mkdir(parents=True)
            (tmp_path / name / "checkpoints" / "best-step9.ckpt").write_text(name)
        with lock:
            running[0] -= 1
            events.append(("end", name, running[0]))
        return 0

    assert Study(tmp_path).run(jobs, execute, parallel=2) == []
    starts = [name for kind, name, _ in events if kind == "start"]
    assert sorted(starts) == sorted(job.name for job in jobs)
    last_training_end = max(i for i, (kind, name, _) in enumerate(events)
                            if kind == "end" and name.startswith("meta_train/"))
    first_test_start = min(i for i, (kind, name, _) in enumerate(events)
                           if kind == "start" and name.startswith("logs/"))
    assert last_training_end < first_test_start
    assert max(count for kind, _, count in events if kind == "start") == 2  # two at a time, never more
    assert all(Study(tmp_path).is_done(job) for job in jobs)


def test_interrupted_meta_training_resumes_from_its_last_checkpoint(tmp_path):
    jobs = plan(PRESETS["quick"], tmp_path, seeds=1, only=["fig3"])
    partial = tmp_path / "meta_train" / "leaky_relu" / "checkpoints" / "last.ckpt"
    partial.parent.mkdir(parents=True)
    partial.write_text("killed mid-way")
    seen = {}

    def execute(args):
        seen[_name_of(args)] = args
        return 0

    Study(tmp_path).run(jobs, execute)
    assert seen["meta_train/leaky_relu"][-2:] == ["--ckpt_path", str(partial)]
    assert partial.read_text() == "killed mid-way"  # the run's directory was kept
    assert "--ckpt_path" not in seen["logs/paper/leaky_relu/adam/seed0"]


def test_meta_tests_of_a_failed_meta_training_are_reported_not_run(tmp_path):
    jobs = plan(PRESETS["quick"], tmp_path, seeds=1, only=["fig1"])
    failed = Study(tmp_path).run(jobs, lambda args: 1 if _name_of(args).startswith("meta_train/") else 0)
    assert {job.name for job in failed} == {job.name for job in jobs if job.name.startswith("meta_train/")
                                            or job.checkpoint_of}


@pytest.mark.slow
@pytest.mark.parametrize("runner", [_run_l2o, _run_l2o_subprocess], ids=["in_process", "subprocess"])
def test_study_commands_run_from_any_working_directory(runner, mnist_dir, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # configs/ is not here: the study's runs start in the repository
    job = next(j for j in plan(PRESETS["quick"], tmp_path, seeds=1, only=["lion_sgd"])
               if j.name == "logs/paper/sigmoid_100_100/sgd/seed0")
    assert runner([*job.args, "--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false"]) == 0
    assert Path.cwd() == elsewhere
    assert list((tmp_path / job.name).glob("events.out.tfevents.*"))


def _name_of(args):
    save_dir = Path(args[args.index("--trainer.logger.init_args.save_dir") + 1])
    name = args[args.index("--trainer.logger.init_args.name") + 1]
    version = args[args.index("--trainer.logger.init_args.version") + 1]
    return str((save_dir / name / version).relative_to(save_dir))
