"""lejepa_ray.cli: the installed `lejepa-ray` console script.

The one-process tests are in ``tests/unit/test_cli.py``."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import TINY, clean_env, console_script, flags, tail

import lejepa_ray


def test_console_script_reports_version():
    out = subprocess.run([console_script(), "--version"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"lejepa-ray {lejepa_ray.__version__}"
    assert lejepa_ray.__version__ != "0+unknown"


def test_the_command_line_starts_without_ray_torch_or_omegaconf():
    """``lejepa-ray --help`` and argument errors stay fast: the top of cli imports nothing
    heavy (each command imports what it needs)."""
    code = (
        "import sys; import lejepa_ray.cli; "
        "print(sorted(m for m in ('ray', 'torch', 'omegaconf') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pretrain_job_entry_point_reports_errors_like_the_cli():
    job = Path(__file__).parents[2] / "jobs" / "pretrain.py"
    out = subprocess.run(
        [sys.executable, str(job), "--loss.lam", "2"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "loss.lam=2" in out.stderr


# What Ray prints on its own: driver log records, worker prefixes, C++ notices, warnings.
RAY_LINE = re.compile(
    r"\(\w+ pid=\d+|\(raylet\)|\b(INFO|WARNING)\b|\w+\.cc:\d+|Warning:|"
    r"PlacementGroupCleaner|SplitCoordinator|Dataset \w+ execution"
)


@pytest.mark.slow
def test_a_killed_driver_leaves_no_ray_processes_and_the_same_command_resumes(tmp_path):
    """SIGKILL the CLI's driver mid-run: nothing of its embedded Ray instance survives it, and
    the same command resumes the run, printing our lines and none of Ray's."""
    import signal

    from chaos import checkpoint_registered

    from lejepa_ray.launch import reaper

    command = [
        console_script(),
        "pretrain",
        *flags([*TINY, "optim.steps=12", f"storage_path={tmp_path}", "name=driver"]),
    ]
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(command, env=clean_env(), stdout=out, stderr=out)
    ready = checkpoint_registered(tmp_path / "driver", 4)
    deadline = time.monotonic() + 300
    while not ready():
        assert driver.poll() is None and time.monotonic() < deadline, tail(log)
        time.sleep(0.5)
    ray_processes = reaper.tree(driver.pid)  # raylet, GCS, agents, workers, Ray Data actors
    assert len(ray_processes) > 3, ray_processes
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 60
    while reaper.alive(ray_processes) and time.monotonic() < deadline:
        time.sleep(1)
    left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:60] for p in reaper.alive(ray_processes)}
    assert not left, f"orphaned: {left}"

    again = subprocess.run(command, env=clean_env(), capture_output=True, text=True, timeout=600)
    lines = [line for line in (again.stdout + again.stderr).splitlines() if line.strip()]
    assert again.returncode == 0, "\n".join(lines[-40:])
    assert lines[0].startswith("run driver: ")
    match = re.search(r"resuming from step (\d+)", lines[0])
    assert match and int(match.group(1)) >= 4, lines[0]
    last = r"step 12/12 \([\d.]+ steps/s, ETA (0s|\?)\) \| loss "  # the pace, none left
    assert any(re.match(last, line) for line in lines), "\n".join(lines)
    # The console of a whole run: our progress and probes, none of Ray's own lines.
    assert [line for line in lines if RAY_LINE.search(line)] == [], "\n".join(lines)
    assert any(line.strip().startswith("raw pixels ") for line in lines)
    assert len(lines) < 25, "\n".join(lines)
