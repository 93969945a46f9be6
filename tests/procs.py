"""Running the installed ``lejepa-ray`` console script (and ``ray``) as a user's shell would,
and the short runs those tests ask for."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The quickstart cut to 8 steps (a checkpoint at 4 and 8) on 512 digits: for the tests that
# run whole pretraining runs, sweeps and jobs.
TINY = [
    "optim.steps=8",
    "optim.warmup_steps=2",
    "checkpoint.every_steps=4",
    "logging.every_steps=2",
    "loss.score_smoothing_steps=4",
    "data.num_samples=512",
]


def flags(overrides: list[str]) -> list[str]:
    """Dotted ``key=value`` overrides (the API's form) as the command line's flags."""
    return [f"--{o}" for o in overrides]


def console_script(name: str = "lejepa-ray") -> str:
    """The path of an installed console script (``lejepa-ray``, ``ray``)."""
    # Scripts sit next to the interpreter of the environment the project is installed in.
    script = Path(sys.executable).with_name(name)
    found = str(script) if script.exists() else shutil.which(name)
    assert found, f"the {name} console script is not installed (make test installs it)"
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the variables that would attach a child process to
    another Ray cluster (this session's own instance, or a job's)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAY_JOB_ID", "RAY_AUTH_TOKEN")
    }
    return {**env, **extra}


def tail(path: Path, lines: int = 60) -> str:
    """The last lines of a log file, for an assertion message."""
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def run_benchmark(name: str, *args: str, timeout_s: float = 900, **env: str) -> dict:
    """Run ``benchmarks/<name>.py`` with ``args`` in a process of its own (with ``env`` added
    to a :func:`clean_env`); the JSON object of its last line. Fails with its output's tail."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        env=clean_env(**env),
        timeout=timeout_s,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
