"""The dashboard users open: ``tensorboard --logdir`` serves the documented tags of a short
real run with probes, with the values the event files hold."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from l2o_lightning.tb import read_scalars

pytestmark = pytest.mark.slow  # real training runs

DOCUMENTED = ("train/loss", "train/acc", "test/loss", "test/acc", "symmetry/rescale/update/abs_sum",
              "symmetry/translation/grad/normalized", "tail_index/grad", "tail_index/update",
              "covariance/top_eig", "covariance/trace", "update/abs_mean", "update/norm")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch(port: int, path: str, **query: str) -> object:
    url = f"http://127.0.0.1:{port}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_tensorboard_serves_the_documented_tags_with_the_logged_values(run_cli, tmp_path):
    run_cli("fit", "-c", "configs/meta_test/leaky_relu.yaml", "-c", "configs/optimizers/adam.yaml",
            "-c", "configs/probes/all.yaml", "--trainer.max_steps", "20",
            "--trainer.val_check_interval", "20", "--trainer.limit_val_batches", "1")
    logs = tmp_path / "logs"
    (run_dir,) = logs.glob("**/version_0")
    run = run_dir.relative_to(logs).as_posix()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logs), "--host", "127.0.0.1",
         "--port", str(port), "--reload_interval", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                runs = fetch(port, "/data/runs")
                if run in runs:
                    break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "tensorboard did not serve the run within 120 s"
            time.sleep(0.5)
        tags = fetch(port, "/data/plugin/scalars/tags")[run]
        assert set(DOCUMENTED) <= set(tags), sorted(set(DOCUMENTED) - set(tags))
        served = fetch(port, "/data/plugin/scalars/scalars", run=run, tag="tail_index/update")
        logged = read_scalars(run_dir)["tail_index/update"]
        assert [(step, pytest.approx(value, rel=1e-6)) for _, step, value in served] == logged
        assert [step for step, _ in logged] == [0, 9, 19]  # k = 1, 10, 20 of a 20-step run, at k - 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert server.returncode is not None
