"""Same seed, same curves: short meta-training and meta-test runs reproduce stored values.

The stored curves (``tests/pinned_curves.json``) were produced by commit 64f9581, before
the redesign of issue 14; a refactor must reproduce them up to float rounding (``RTOL``: the
LSTM kernels may reorder float operations), while any real change of the computation fails.
After a deliberate change of behaviour, regenerate them with
``L2O_UPDATE_PINS=1 pytest tests/test_pinned_curves.py`` and say why in the commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from l2o_lightning.tb import read_scalars

PINS = Path(__file__).with_name("pinned_curves.json")
RTOL = 1e-5
# A learned optimizer's trajectory amplifies float rounding: on the pretrained L2O's 30-step
# meta-test, float32 runs (eager or C kernels) differ from a float64 run by ~1e-6 relative up
# to step 10 and by up to 2e-3 by step 30. Its pin is tight up to step 10, loose after.
CHAOTIC_FROM, CHAOTIC_RTOL = 10, 1e-2
META_TRAINING = (  # 2 trajectories of 40 steps in truncations of 20: 4 meta-steps, then one validation
    "--model.unroll.n_iters", "40", "--model.unroll.length", "20",
    "--model.init_args.trajectories", "2", "--model.evaluation.tasks", "1",
    "--model.evaluation.val_n_iters", "10", "--trainer.val_check_interval", "4",
    "--trainer.limit_val_batches", "1", "--seed_everything", "0",
)
# the validation loss at optimizee steps 1 and 10: points 0 and 9 of the whole curve that 64f9581 logged
META_TRAINING_TAGS = ("meta/loss", "meta/optimizee_loss", "val/loss_curve/step_1", "val/loss_curve/step_10",
                      "val/final_test_loss")
META_TEST_OPTIMIZERS = {  # 30 optimizee steps each
    "adam": ("-c", "configs/optimizers/adam.yaml"),
    "l2o": ("-c", "configs/optimizers/l2o.yaml", "--optimizer.checkpoint", "pretrained:leaky_relu"),
}


def curves(run_dir: Path, tags) -> dict[str, list[list[float]]]:
    scalars = read_scalars(run_dir)
    return {tag: [[step, value] for step, value in scalars[tag]] for tag in tags}


def dump(pins: dict[str, dict[str, list[list[float]]]]) -> str:
    """JSON with one line per curve."""
    runs = (
        f" {json.dumps(name)}: {{\n"
        + ",\n".join(f"  {json.dumps(tag)}: {json.dumps(points)}" for tag, points in sorted(run.items()))
        + "\n }"
        for name, run in sorted(pins.items())
    )
    return "{\n" + ",\n".join(runs) + "\n}\n"


def check_or_update(name: str, measured: dict[str, list[list[float]]], chaotic: bool = False) -> None:
    """Compare ``measured`` with the stored curves ``name`` (steps exactly, values to ``RTOL``;
    ``chaotic``: values from step ``CHAOTIC_FROM`` on to ``CHAOTIC_RTOL``), or store it under
    ``L2O_UPDATE_PINS=1``."""
    stored = json.loads(PINS.read_text()) if PINS.exists() else {}
    if os.environ.get("L2O_UPDATE_PINS") == "1":
        PINS.write_text(dump({**stored, name: measured}))
        return
    assert set(measured) == set(stored[name])
    for tag, points in stored[name].items():
        steps, values = zip(*points, strict=True)
        assert [step for step, _ in measured[tag]] == list(steps), tag
        tight = CHAOTIC_FROM if chaotic else len(values)
        measured_values = [value for _, value in measured[tag]]
        assert measured_values[:tight] == pytest.approx(values[:tight], rel=RTOL, abs=0), tag
        assert measured_values[tight:] == pytest.approx(values[tight:], rel=CHAOTIC_RTOL, abs=0), tag


@pytest.mark.mnist
def test_meta_training_curves_are_pinned(run_cli, tmp_path):
    run_cli("fit", "-c", "configs/meta_train/leaky_relu.yaml", *META_TRAINING)
    run_dir = tmp_path / "logs" / "meta_train" / "leaky_relu" / "version_0"
    measured = curves(run_dir, META_TRAINING_TAGS)
    assert len(measured["meta/loss"]) == 4
    check_or_update("meta_train/leaky_relu", measured)


@pytest.mark.mnist
@pytest.mark.parametrize("optimizer", sorted(META_TEST_OPTIMIZERS))
def test_meta_test_curves_are_pinned(run_cli, tmp_path, optimizer):
    run_cli("fit", "-c", "configs/meta_test/leaky_relu.yaml", *META_TEST_OPTIMIZERS[optimizer],
            "--trainer.max_steps", "30", "--seed_everything", "0")
    run_dir = tmp_path / "logs" / "meta_test" / "leaky_relu" / optimizer / "version_0"
    measured = curves(run_dir, ["train/loss"])
    assert len(measured["train/loss"]) == 30
    check_or_update(f"meta_test/leaky_relu/{optimizer}", measured, chaotic=optimizer == "l2o")
