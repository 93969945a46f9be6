"""Reap an embedded Ray instance whose driver was killed.

``ray.init()`` starts the GCS and the raylet as children of the driver and they share its fate,
but the agents the raylet starts (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) outlive a
driver killed with SIGKILL: reparented to init, they run until the machine reboots. A killed
``lejepa-ray pretrain`` must not leave processes behind, so :func:`start` launches this module
as a small watcher in its own session. Every second it records the driver's process tree (pid
and start time, so a reused pid is never mistaken for one of ours); once the driver is gone it
SIGKILLs whatever of that tree is still running, then exits. After a normal exit Ray has already
stopped its processes and there is nothing left to kill.

    python -m lejepa_ray.launch.reaper <driver pid>
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time in clock ticks) of ``pid``, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def tree(root: int) -> dict[int, int]:
    """The processes below ``root``: pid -> start time."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            starts[int(entry.name)] = stat[2]
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = starts[child]
            todo.append(child)
    return found


def alive(processes: dict[int, int]) -> dict[int, int]:
    """Those of ``processes`` (pid -> start time) still running, zombies excluded."""
    out = {}
    for pid, start in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[2] == start and stat[1] != "Z":
            out[pid] = start
    return out


def watch(driver: int, interval_s: float = 1.0) -> None:
    """Record ``driver``'s tree until it exits, then kill what remains of it."""
    seen: dict[int, int] = {}
    while (stat := _stat(driver)) is not None and stat[1] != "Z":
        seen.update(tree(driver))
        time.sleep(interval_s)
    seen.pop(os.getpid(), None)  # the watcher is the driver's child too
    for pid in alive(seen):
        with contextlib.suppress(OSError):  # exited meanwhile
            os.kill(pid, signal.SIGKILL)


def start() -> subprocess.Popen | None:
    """Watch this process from a detached watcher (Linux only: it reads ``/proc``)."""
    if not Path("/proc/self/stat").exists():
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "lejepa_ray.launch.reaper", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the driver's process group: a Ctrl+C spares it
    )


if __name__ == "__main__":
    watch(int(sys.argv[1]))
