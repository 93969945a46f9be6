"""Training metrics from rank 0: a TensorBoard event file, the tracking of
:mod:`lejepa_ray.train.tracking` (``metrics.jsonl``, MLflow, W&B) and a console progress line.

TensorBoard writes locally; for a run stored at a URI (``s3://...``) the event files are
written to a local folder and copied next to the checkpoints whenever one is saved.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pyarrow import fs
from torch.utils.tensorboard import SummaryWriter

from lejepa_ray.storage import is_local
from lejepa_ray.train.diagnostics import write_png
from lejepa_ray.train.tracking import Tracking

TENSORBOARD_DIR = "tensorboard"
DIAGNOSTICS_DIR = "diagnostics"
"""In the run directory: the SIGReg pictures of each checkpoint (``train.diagnostics``)."""
# In a Ray Train worker the root logger goes to the driver's console and the worker's log file;
# print() would be captured twice.
log = logging.getLogger(__name__)


class MetricsWriter:
    """Rank 0's metrics sink: scalars to TensorBoard under ``run_dir/tensorboard``, and one
    progress line per log step to the log (which Ray shows on the driver's console)."""

    def __init__(
        self,
        run_dir: str,
        total_steps: int,
        resumed_step: int | None = None,
        tracking: Tracking | None = None,
        line_level: int = logging.INFO,
    ):
        """``resumed_step``: the checkpoint's step when the run resumes; TensorBoard then
        drops the events a failed attempt logged after it, so every step appears once.
        ``tracking``: where else the metrics go (opened with the same ``resumed_step``).
        ``line_level``: the progress line's log level (DEBUG when the driver draws a bar)."""
        self.run_dir, self.total_steps, self.tracking = run_dir, total_steps, tracking
        self.line_level = line_level
        self.progress = Progress(total_steps)
        if is_local(run_dir):
            self.local_dir = str(Path(run_dir.removeprefix("file://"), TENSORBOARD_DIR))
        else:
            self.local_dir = tempfile.mkdtemp(prefix="lejepa-tb-")
        purge = None if resumed_step is None else resumed_step + 1
        self.writer = SummaryWriter(self.local_dir, purge_step=purge)
        self._syncing: threading.Thread | None = None  # a background sync (sync(wait=False))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Write ``metrics`` of ``step``, with the run's pace (``progress/steps_per_s``) and
        the time left (``progress/eta_s``) added, and log the progress line."""
        rate, eta = self.progress.update(step, metrics.get("time/step_s", 0.0))
        metrics = {**metrics, "progress/steps_per_s": rate, "progress/eta_s": eta}
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()
        if self.tracking is not None:
            self.tracking.log(step, metrics)
        log.log(self.line_level, format_line(step, self.total_steps, metrics))

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """Pictures of ``step`` (uint8 (H, W, 3) by tag, e.g. ``sigreg/spectrum``): TensorBoard
        images, and PNGs at ``diagnostics/step_<step>/<name>.png`` in the run directory."""
        for tag, image in images.items():
            self.writer.add_image(tag, image, step, dataformats="HWC")
            name = tag.rsplit("/", 1)[-1]
            write_png(
                image, f"{self.run_dir.rstrip('/')}/{DIAGNOSTICS_DIR}/step_{step:08d}/{name}.png"
            )
        self.writer.flush()

    def resumed(
        self,
        step: int,
        load_seconds: float,
        bytes_read: Sequence[int] = (),
        bytes_total: int = 0,
    ) -> None:
        """Mark in TensorBoard that this attempt resumed from the checkpoint of ``step`` (at
        this wall time, after ``load_seconds`` of loading), with the bytes each rank fetched
        (``resume/bytes_read/rank_<r>``) against the checkpoint's size (``resume/bytes_total``)."""
        figures = {"resume/load_s": load_seconds}
        for rank, count in enumerate(bytes_read):
            figures[f"resume/bytes_read/rank_{rank}"] = count
        if bytes_total:
            figures["resume/bytes_total"] = bytes_total
        for name, value in figures.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()
        if self.tracking is not None:
            self.tracking.log(step, figures)

    def sync(self, wait: bool = True) -> threading.Thread | None:
        """Copy the event files (and ``metrics.jsonl``) to the run directory when it is remote.
        ``wait=False``: copy them as they are now, in a background thread, while training goes
        on, and return the thread (one copy at a time: the next sync first waits for the
        previous one). Call from one thread (the training thread)."""
        self.writer.flush()
        self._join()
        jobs = [self.tracking.snapshot()] if self.tracking is not None else []
        if not is_local(self.run_dir):
            staged = tempfile.mkdtemp(prefix="lejepa-tb-sync-")  # the files as they are now
            shutil.copytree(self.local_dir, staged, dirs_exist_ok=True)
            dest = f"{self.run_dir.rstrip('/')}/{TENSORBOARD_DIR}"

            def copy() -> None:
                try:
                    fs.copy_files(staged, dest)
                finally:
                    shutil.rmtree(staged, ignore_errors=True)

            jobs.append(copy)
        if wait:
            for job in jobs:
                job()
            return None

        def run() -> None:
            for job in jobs:
                try:
                    job()
                except Exception as e:  # a copy of logs never fails training; the next retries
                    log.warning("copying the metrics to %s failed: %s", self.run_dir, e)

        thread = threading.Thread(target=run, name="metrics-sync", daemon=True)
        thread.start()
        self._syncing = thread  # written by the calling thread only, never cleared
        return thread

    def _join(self) -> None:
        thread = self._syncing  # read once: joining a finished thread returns at once
        if thread is not None:
            thread.join()

    def close(self, failed: bool = False) -> None:
        """Flush and close; ``failed``: the attempt ends on an error (its tracking runs say so)."""
        try:
            self.sync()
            self.writer.close()
        finally:
            if self.tracking is not None:
                self.tracking.close(failed)


class Progress:
    """The run's pace and the time left, from the wall clock between progress lines.

    From the second progress line on, the pace is averaged since this attempt's first line, so
    the start (workers, the pipeline's first batches) does not weigh on it, and the reports,
    checkpoints and data waits since do. At the first line it is that window's mean step time,
    start included, so the first ETA runs long. Each attempt's writer (a resumed one too)
    starts its own average.
    """

    def __init__(self, total_steps: int, clock: Callable[[], float] = time.monotonic):
        self.total_steps, self.clock = total_steps, clock
        self.first: tuple[int, float] | None = None

    def update(self, step: int, step_s: float) -> tuple[float, float]:
        """(steps per second, seconds left) at ``step``; ``step_s`` is the window's mean step
        time, used at the first line. Seconds left are inf while the pace is unknown."""
        now = self.clock()
        if self.first is None:
            self.first = (step, now)
            rate = 1 / step_s if step_s > 0 else 0.0
        else:
            rate = (step - self.first[0]) / max(now - self.first[1], 1e-9)
        left = (self.total_steps - step) / rate if rate > 0 else math.inf
        return rate, left


def format_duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``, or ``?`` when unknown (inf or nan)."""
    if not math.isfinite(seconds):
        return "?"
    s = round(max(seconds, 0.0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


def format_line(step: int, total_steps: int, m: dict[str, float]) -> str:
    """One console progress line."""
    pace = ""
    if "progress/steps_per_s" in m:
        eta = format_duration(m["progress/eta_s"])
        pace = f" ({m['progress/steps_per_s']:.2f} steps/s, ETA {eta})"
    parts = [
        f"step {step}/{total_steps}{pace}",
        f"loss {m['loss']:.4f} (pred {m['loss/prediction']:.4f}, sigreg {m['loss/sigreg']:.3f})",
        f"score {m['selection_score']:.3f}",
        f"lr {m['lr']:.2e}",
        f"gnorm {m['grad_norm']:.2f}",
        f"{m['throughput/images_per_s']:.1f} img/s {m['throughput/views_per_s']:.0f} views/s",
    ]
    if "throughput/tflops_per_device" in m:
        mfu = f" MFU {m['throughput/mfu']:.1%}" if "throughput/mfu" in m else ""
        parts.append(f"{m['throughput/tflops_per_device']:.2f} TFLOP/s{mfu}")
    if "rankme/backbone" in m:  # at checkpoints
        parts.append(f"rankme {m['rankme/backbone']:.1f} (proj {m['rankme/projector']:.1f})")
    parts.append(f"data wait {m['time/data_wait_fraction']:.0%}")
    if "time/augment" in m:
        parts.append(f"augment {1e3 * m['time/augment']:.0f} ms/step")
    parts.append(f"mem {m['memory/peak_gib']:.1f} GiB")
    if "data/skipped" in m:
        parts.append(f"skipped {int(m['data/skipped'])}")
    if m.get("steps/skipped_nonfinite"):
        parts.append(f"non-finite steps skipped {int(m['steps/skipped_nonfinite'])}")
    return " | ".join(parts)
