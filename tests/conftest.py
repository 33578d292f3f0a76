"""Shared fixtures: the offline MNIST root and a CLI runner."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED_DATA = REPO.parent / "shared" / "data"
MNIST_SKIP = "MNIST not found"  # how the skips of tests needing MNIST begin
# MLP settings covering every activation, BatchNorm, and depth
OPTIMIZEES = {
    "leaky_relu": dict(hidden=[20], activation="leaky_relu"),
    "relu": dict(hidden=[20], activation="relu"),
    "linear": dict(hidden=[20], activation="linear"),
    "sigmoid": dict(hidden=[20], activation="sigmoid"),
    "bn_relu": dict(hidden=[20], activation="relu", batchnorm=True),
    "deep_bn_leaky": dict(hidden=[16, 12, 8], activation="leaky_relu", batchnorm=True),
}


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The MNIST root; skips (fails under ``L2O_REQUIRE_DATA=1``, as in CI) when absent."""
    root = Path(os.environ.get("L2O_DATA_DIR") or DEFAULT_SHARED_DATA).resolve()
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        message = (
            f"{MNIST_SKIP} under {root}: set L2O_DATA_DIR to a folder holding "
            "MNIST/raw/ (the four IDX files), or run once with internet so torchvision downloads it"
        )
        if os.environ.get("L2O_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    os.environ["L2O_DATA_DIR"] = str(root)
    return root


@pytest.fixture
def run_cli(mnist_dir, run_cli_no_data):
    """Run ``l2o`` in-process from the repo root with logs under ``tmp_path``, MNIST found."""
    return run_cli_no_data


@pytest.fixture
def run_cli_no_data(tmp_path, monkeypatch):
    """Run ``l2o`` in-process from the repo root with logs under ``tmp_path``, whether MNIST is
    there or not: for runs that must stop before they read any data (parsing, pre-run checks)."""
    from l2o_lightning.cli import main

    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["l2o"])  # LightningCLI warns when pytest's argv is present

    def run(*args: str) -> None:
        main([*args, "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])

    return run


def pytest_collection_modifyitems(items) -> None:
    """Mark every test that needs MNIST (through the ``mnist_dir`` fixture) ``mnist``."""
    for item in items:
        if "mnist_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mnist)


def pytest_terminal_summary(terminalreporter) -> None:
    """End the run with how many tests needing MNIST were skipped, and why: a green run that
    skipped them tested much less."""
    reasons = Counter(
        report.longrepr[2].removeprefix("Skipped: ") for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report.longrepr, tuple) and MNIST_SKIP in report.longrepr[2]
    )
    total = sum(reasons.values())
    if total:
        tests = "test needing MNIST was" if total == 1 else "tests needing MNIST were"
        terminalreporter.write_sep("=", f"{total} {tests} skipped", yellow=True, bold=True)
        for reason, count in reasons.items():
            terminalreporter.write_line(f"{count} x {reason}")
