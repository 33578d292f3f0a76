"""What a run and the test suite print: no third-party adverts, deprecations or model tables
around a run; the project's own warnings are errors in tests; skipped MNIST tests are counted."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # real training runs


def test_a_run_prints_no_third_party_noise(mnist_dir, tmp_path):
    # -W default: Python would show every deprecation; what stays hidden is l2o's doing
    tiny = ["--model.unroll.n_iters", "2", "--model.unroll.length", "2", "--data.batches_per_step", "2",
            "--model.init_args.trajectories", "1", "--model.evaluation.val_n_iters", "2",
            "--model.evaluation.tasks", "1", "--trainer.limit_val_batches", "1"]
    result = subprocess.run(
        [sys.executable, "-W", "default", "-m", "l2o_lightning.cli", "fit", "-c",
         "configs/meta_train/leaky_relu.yaml", *tiny, "--trainer.enable_progress_bar", "false",
         "--trainer.logger.init_args.save_dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout + result.stderr
    assert "`Trainer.fit` stopped: `max_steps=1` reached." in printed  # Lightning's own lines stay
    for noise in ("litlogger", "LeafSpec", "skip_none", "instantiate_classes", "Trainable params"):
        assert noise not in printed, noise


def test_the_projects_own_warnings_are_errors_in_tests_third_party_ones_ignored():
    with pytest.raises(UserWarning, match="own"):
        warnings.warn_explicit("own", UserWarning, "meta.py", 1, module="l2o_lightning.meta")
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("theirs", UserWarning, "module.py", 1, module="lightning.pytorch.core.module")
    assert caught == []


def test_skipped_mnist_tests_are_counted_at_the_end(tmp_path):
    test = "tests/test_cli.py::test_console_script_exits_nonzero_without_traceback"  # needs MNIST
    env = {**os.environ, "L2O_DATA_DIR": str(tmp_path / "no_mnist"), "L2O_REQUIRE_DATA": "0"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                            cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 test needing MNIST was skipped" in result.stdout
    assert f"1 x MNIST not found under {tmp_path / 'no_mnist'}: set L2O_DATA_DIR" in result.stdout
