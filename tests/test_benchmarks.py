"""Every script in benchmarks/ runs end to end in its ``--smoke`` mode, so none can rot unseen."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # real training runs

SCRIPTS = sorted((REPO / "benchmarks").glob("bench_*.py"))
# a line each script prints only after its last measurement
LAST_LINE = {
    "bench_meta": "both cores, wall clock",
    "bench_scale": "resumed from checkpoint of meta-step",
    "bench_probes": "(whole loader)",
}


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_benchmark_smoke_mode_runs(script, mnist_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "L2O_DATA_DIR": str(mnist_dir)}
    result = subprocess.run([sys.executable, str(script), "--smoke"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert LAST_LINE[script.stem] in result.stdout, result.stdout[-2000:]
