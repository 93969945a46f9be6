"""jobs/: the `ray job submit` flow against a real Ray head, as on a cluster.

One test starts `ray start --head` (its own temp dir and free ports, token authentication on,
``LEJEPA_STORAGE_PATH`` set as cluster.yaml sets it), submits the quickstart pretraining and a
2-trial sweep with the `ray job submit` command line, checks their outputs, and stops the head.
The one-process tests are in ``tests/unit/test_jobs.py``."""

from __future__ import annotations

import csv
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from procs import TINY, clean_env, console_script, flags, tail
from readme_helpers import job_commands

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Head:
    """A `ray start --head --block` process and the environment its clients use."""

    def __init__(self, tmp: Path):
        # Short: Ray's unix sockets live under the temp dir, and their paths are length-limited.
        self.temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")
        self.token = tmp / "auth_token"
        self.token.write_text(secrets.token_hex(32))
        self.storage = tmp / "store"
        self.dashboard = f"http://127.0.0.1:{_free_port()}"
        # The job drivers' `python` is this environment's, as a node's is its image's.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = clean_env(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token),
            PATH=path,
            RAY_ADDRESS=self.dashboard,
            LEJEPA_STORAGE_PATH=str(self.storage),
            RAY_USAGE_STATS_ENABLED="0",
        )
        self.log = tmp / "head.log"
        # CPUs: the sweep trial's driver, its 2 training workers and Ray Data's actors and reads
        # (lejepa_ray.launch.runtime.local_num_cpus(3) on this 2-core machine).
        cmd = [
            console_script("ray"),
            "start",
            "--head",
            "--block",
            "--temp-dir",
            self.temp_dir,
            "--port",
            str(_free_port()),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            self.dashboard.rsplit(":", 1)[1],
            "--num-cpus",
            "6",
            "--include-dashboard",
            "true",
        ]
        # Every port a second instance on this machine could collide on (this session's own
        # Ray instance holds the defaults, e.g. the dashboard agent's 52365: then the head has
        # no agent, and every submission fails with "No available agent").
        for flag in (
            "--ray-client-server-port",
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--metrics-export-port",
            "--runtime-env-agent-port",
            "--node-manager-port",
            "--object-manager-port",
        ):
            cmd += [flag, str(_free_port())]
        with self.log.open("w") as log:
            start_env = {k: v for k, v in self.env.items() if k != "RAY_ADDRESS"}
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=start_env)

    def ray(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [console_script("ray"), *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**self.env, **env},
            timeout=timeout,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"ray start exited:\n{tail(self.log)}"
            if self.ray("job", "list", timeout=30).returncode == 0:
                return
            time.sleep(2)
        pytest.fail(f"the job API did not answer in {timeout:.0f} s:\n{tail(self.log)}")

    def submit(self, job_id: str, *entrypoint: str, timeout: float) -> str:
        """`ray job submit --working-dir .` as the README writes it; the job's logs."""
        # Until the head's dashboard agent (which runs the jobs) has registered, a submission
        # fails with "No available agent ... try again later": retry for a while.
        deadline = time.monotonic() + 120
        while True:
            out = self.ray(
                "job",
                "submit",
                "--working-dir",
                ".",
                "--submission-id",
                job_id,
                "--",
                *entrypoint,
                timeout=timeout,
            )
            logs = out.stdout + out.stderr
            if "No available agent" not in logs or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert out.returncode == 0, logs[-6000:]
        status = self.ray("job", "status", job_id)
        assert f"Job '{job_id}' succeeded" in status.stdout, status.stdout + status.stderr
        return logs

    def stop(self) -> None:
        # `ray start --block` stops the head's processes when it is signalled; `ray stop` would
        # stop every Ray instance on the machine, this test session's own included.
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        leftover = subprocess.run(["pgrep", "-f", self.temp_dir], capture_output=True, text=True)
        if leftover.stdout.strip():
            subprocess.run(["pkill", "-9", "-f", self.temp_dir])


@pytest.mark.slow
def test_ray_job_submit_pretrain_and_sweep_on_a_token_authenticated_head(tmp_path):
    head = Head(tmp_path)
    try:
        head.wait_ready()
        # Token authentication is on: a client with another token is turned away.
        wrong = head.ray("job", "list", RAY_AUTH_TOKEN=secrets.token_hex(32))
        assert wrong.returncode != 0
        assert "auth" in (wrong.stdout + wrong.stderr).lower()

        # The README's job, as written there (the packaged quickstart), at 8 steps.
        (job,) = job_commands()
        logs = head.submit("e2e-pretrain", *job, *flags(TINY), timeout=600)
        # storage_path came from LEJEPA_STORAGE_PATH, as on a cluster.
        run = head.storage / job[job.index("--name") + 1]
        assert (run / "checkpoint_00000008" / "state.json").exists(), logs[-4000:]
        assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
        assert "probe (train/val: fitted on" in logs and "raw pixels" in logs  # probes ran

        logs = head.submit(
            "e2e-sweep",
            "python",
            "jobs/sweep.py",
            "--space",
            "tune_spaces/lambda_slices.yaml",
            "--config",
            "platform/lejepa_ray/configs/quickstart.yaml",
            "--name",
            "e2e-sweep",
            "--samples",
            "1",
            "--scheduler",
            "fifo",
            *flags(TINY),
            timeout=900,
        )
        # One trial is enough to show the entry point works as a job (ranking many is
        # test_sweep's); its RankMe, the default --select-by, is in the results.
        sweep = head.storage / "e2e-sweep"
        with (sweep / "results.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert [(r["rank"], r["status"]) for r in rows] == [("1", "completed")], logs[-4000:]
        assert float(rows[0]["rankme_backbone"]) >= 1
        assert (sweep / "winner" / "config.json").exists()
        for r in rows:
            assert (sweep / "runs" / r["trial"] / "checkpoint_00000008").is_dir()
        listed = head.ray("job", "list").stdout
        for job_id in ("e2e-pretrain", "e2e-sweep"):
            assert re.search(
                rf"submission_id='{job_id}'.*?status=<JobStatus.SUCCEEDED", listed, re.S
            ), listed
    finally:
        head.stop()
    assert head.proc.returncode is not None
    shutil.rmtree(head.temp_dir, ignore_errors=True)  # kept, with the head's logs, on failure
