"""Fault injection on one machine: SIGKILL a Ray Train worker mid-run, then measure recovery.

Used by the recovery test and ``benchmarks/recovery.py``; a test tool, so it lives here and not
in the package (tests/conftest.py puts this folder on ``sys.path``). Workers are found by their
process title (Ray names actor processes ``ray::<Class>.<method>``), so this needs Linux's
``/proc`` and a run whose workers live on this machine.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

WORKER_TITLE = b"ray::RayTrainWorker"


def train_worker_pids() -> list[int]:
    """PIDs of this machine's Ray Train worker processes."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cmdline").read_bytes().startswith(WORKER_TITLE):
                pids.append(int(entry.name))
        except OSError:  # exited meanwhile, or not ours to read
            continue
    return sorted(pids)


def checkpoint_registered(run_dir: str | Path, step: int):
    """A condition for :class:`KillAfter`: Ray Train has registered the run's checkpoint of
    ``step`` as its latest. Its files appear in the run directory before that, and a worker
    killed in between resumes from the previous checkpoint (or from scratch), as it should."""
    from lejepa_ray.runs import latest_checkpoint

    name = f"checkpoint_{step:08d}"

    def ready() -> bool:
        latest = latest_checkpoint(str(run_dir))
        return latest is not None and Path(latest.uri).name == name

    return ready


def checkpoint_being_written(run_dir: str, step: int):
    """A condition for :class:`KillAfter`: files of the checkpoint of ``step`` have appeared
    in the run directory (a local path or URI) but Ray Train has not registered it yet, so a
    kill now lands while it is being saved."""
    from lejepa_ray.runs import latest_checkpoint
    from lejepa_ray.storage import Folder

    folder = Folder.at(f"{str(run_dir).rstrip('/')}/checkpoint_{step:08d}")

    def ready() -> bool:
        if not folder.files():
            return False
        latest = latest_checkpoint(str(run_dir))
        return latest is None or not latest.uri.endswith(folder.name())

    return ready


class KillAfter(threading.Thread):
    """Once ``ready()`` holds, wait ``delay_s`` more, then SIGKILL one training worker.

    ``killed_at`` (``time.time()``) and ``pid`` are set when it fired; ``error`` when it could
    not (no worker found before ``timeout_s``).
    """

    def __init__(self, ready, delay_s: float = 0.0, timeout_s: float = 300.0):
        super().__init__(daemon=True)
        self.ready, self.delay_s, self.timeout_s = ready, delay_s, timeout_s
        self.killed_at: float | None = None
        self.pid: int | None = None
        self.error: str | None = None

    def run(self) -> None:
        deadline = time.time() + self.timeout_s
        while not self.ready():
            if time.time() > deadline:
                self.error = "the condition to kill never held"
                return
            time.sleep(0.2)
        time.sleep(self.delay_s)
        pids = train_worker_pids()
        if not pids:
            self.error = "no Ray Train worker process found"
            return
        self.pid = pids[-1]
        os.kill(self.pid, signal.SIGKILL)
        self.killed_at = time.time()


@dataclass
class Recovery:
    """How a run recovered from a killed worker, read from its TensorBoard events."""

    checkpoint_step: int
    """The step of the checkpoint the run resumed from."""
    last_step_before_kill: int
    """The last step logged before the kill."""
    seconds_to_resume: float
    """From the kill to the restarted workers having loaded the checkpoint (failure detection,
    new worker processes, model build, checkpoint load)."""
    seconds_to_next_step: float
    """From the kill to the first step logged after the restart (the above, plus the data
    pipeline's restart and one step)."""

    @property
    def steps_recomputed(self) -> int:
        return self.last_step_before_kill - self.checkpoint_step


def scalar_events(tensorboard_dir: str | Path, tag: str = "loss") -> list[tuple[float, int]]:
    """(wall time, step) of every event of ``tag``, over all event files, in time order."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    events = []
    for file in Path(tensorboard_dir).glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(file)).Load():
            if any(v.tag == tag for v in event.summary.value):
                events.append((event.wall_time, event.step))
    return sorted(events)


def recovery(tensorboard_dir: str | Path, killed_at: float, checkpoint_step: int) -> Recovery:
    """Recovery figures of a run logged every step, killed at ``killed_at``."""
    events = scalar_events(tensorboard_dir)
    before = [step for t, step in events if t <= killed_at]
    after = [t for t, step in events if t > killed_at and step > checkpoint_step]
    resumed = [
        t
        for t, step in scalar_events(tensorboard_dir, "resume/load_s")
        if t > killed_at and step == checkpoint_step
    ]
    if not before or not after or not resumed:
        raise RuntimeError(
            f"{tensorboard_dir} does not show a run that was logging steps, "
            f"resumed from step {checkpoint_step} and went on after the kill"
        )
    return Recovery(checkpoint_step, max(before), min(resumed) - killed_at, min(after) - killed_at)


def recoveries(tensorboard_dir: str | Path, killed_at: list[float]) -> list[Recovery]:
    """Recovery figures for each of several kills of one run (times in order): each resumed
    from the checkpoint whose ``resume/load_s`` event follows it first."""
    resumes = scalar_events(tensorboard_dir, "resume/load_s")
    out = []
    for kill in killed_at:
        step = next((s for t, s in resumes if t > kill), None)
        if step is None:
            raise RuntimeError(f"{tensorboard_dir} shows no resume after the kill at {kill:.0f}")
        out.append(recovery(tensorboard_dir, kill, step))
    return out
