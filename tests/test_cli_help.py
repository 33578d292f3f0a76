"""``l2o fit --model.help NAME`` / ``--optimizer.help NAME`` take a class's short name: the
project's modules and optimizers, torch's optimizers; an unknown name gets one paragraph."""

from __future__ import annotations

import pytest

from l2o_lightning.cli import main


def help_text(capsys, monkeypatch, *args: str) -> str:
    """The help ``l2o fit ARGS`` prints (it must exit with code 0)."""
    monkeypatch.setattr("sys.argv", ["l2o"])  # LightningCLI warns when pytest's argv is present
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(("flag", "name", "class_path", "settings"), [
    ("--model.help", "OptimizeeModule", "l2o_lightning.optimizee_module.OptimizeeModule",
     ["--model.hidden", "--model.track_running_stats"]),
    ("--model.help", "MetaTrainModule", "l2o_lightning.meta.MetaTrainModule",
     ["--model.optimizee", "--model.net", "--model.unroll.length", "--model.evaluation.tasks"]),
    ("--optimizer.help", "L2O", "l2o_lightning.optim.L2O", ["--optimizer.checkpoint"]),
    ("--optimizer.help", "Adam", "torch.optim.Adam", ["--optimizer.betas", "--optimizer.eps"]),
])
def test_a_short_class_name_gets_that_class_help(capsys, monkeypatch, flag, name, class_path, settings):
    out = help_text(capsys, monkeypatch, flag, name)
    assert f"Help for {flag}={class_path}" in out
    for setting in settings:
        assert setting in out
    # only that class's settings, not the 500-line help of the whole command
    assert "--trainer.max_steps" not in out and len(out.splitlines()) < 120


def test_a_full_class_path_still_works(capsys, monkeypatch):
    out = help_text(capsys, monkeypatch, "--model.help", "l2o_lightning.optimizee_module.OptimizeeModule")
    assert "--model.hidden" in out


@pytest.mark.parametrize(("flag", "name", "closest", "listed"), [
    ("--model.help", "OptimizeeModul", "OptimizeeModule", "OptimizeeModule, MetaTrainModule"),
    ("--optimizer.help", "Adamm", "Adam", "L2O, LionSGD"),
])
def test_an_unknown_class_name_is_one_paragraph_with_the_closest(capsys, monkeypatch, flag, name, closest,
                                                                  listed):
    monkeypatch.setattr("sys.argv", ["l2o"])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", flag, name])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    section = flag[2:].split(".")[0]
    assert line.startswith(f"l2o: error: `{flag} {name}`: no {section} class is named {name}; "
                           f"did you mean `{closest}`?")
    assert f"Classes known by their name: {listed}" in line
