"""The live progress bar of ``pretrain`` on a terminal.

Rank 0 writes a line of metrics per log step to the run's ``metrics.jsonl``
(:mod:`lejepa_ray.train.tracking`). On a terminal the driver follows that file and draws one
tqdm bar (steps, pace, ETA, loss, images/s) in place of the progress lines, which the workers
then log below the console's level; into a file or a pipe nothing changes, and the logs keep
one plain grep-able line per log step. A run directory at a URI gets its ``metrics.jsonl`` only
at checkpoints, too seldom for a bar, so such runs keep the lines.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
from pathlib import Path
from typing import IO, Any

from lejepa_ray import storage
from lejepa_ray.train.config import LoggingConfig
from lejepa_ray.train.tracking import JSONL_FILE


def wanted(cfg: LoggingConfig, run_dir: str, stream: IO[str] | None = None) -> bool:
    """Whether to draw the bar: ``logging.progress_bar``, a terminal, a local run directory,
    and not ``logging.verbose`` (whose Ray logs would tear the bar)."""
    stream = stream or sys.stdout
    tty = bool(getattr(stream, "isatty", lambda: False)())
    return cfg.progress_bar and tty and storage.is_local(run_dir) and not cfg.verbose


def _columns(stream: IO[str]) -> int:
    """The terminal's width in columns, 0 when unknown."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return 0


class LiveBar:
    """A tqdm bar following ``metrics.jsonl`` in a background thread, between ``with`` and its
    end. ``total``: the run's ``optim.steps``; ``start``: the step it resumes from."""

    def __init__(
        self,
        run_dir: str,
        total: int,
        start: int = 0,
        stream: IO[str] | None = None,
        interval_s: float = 0.5,
    ):
        # lazy: tqdm is only for a terminal's bar.
        from tqdm import tqdm

        self.path = Path(run_dir.removeprefix("file://"), JSONL_FILE)
        self.start = start
        self.interval_s = interval_s
        self.offset = 0
        stream = stream or sys.stdout
        # A pseudo-terminal that reports a 0 × 0 screen (some CI runners, `script`) would get
        # no bar at all: give it a fixed size instead.
        wide = _columns(stream) > 0
        self.bar = tqdm(
            total=total,
            initial=start,
            unit="step",
            file=stream,
            dynamic_ncols=wide,
            ncols=None if wide else 100,
            nrows=None if wide else 20,  # tqdm draws nothing on a screen 0 rows high
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
            "{rate_fmt}]{postfix}",
            # The first steps wait for workers and the pipeline: the smoothed rate forgets them.
            smoothing=0.1,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="progress-bar", daemon=True)

    def __enter__(self) -> LiveBar:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()
        self.bar.close()

    def _follow(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        """Read the lines written since the last poll; move the bar to the last step."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size < self.offset:  # a resumed attempt rewrote the file up to its checkpoint
            self.offset = 0
        with self.path.open() as f:
            f.seek(self.offset)
            text = f.read()
        complete = text[: text.rfind("\n") + 1]  # a line being written waits for the next poll
        self.offset += len(complete.encode())
        for line in complete.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "loss" in record:  # a training step (not a resume or probe record)
                self._show(record)

    def _show(self, m: dict[str, Any]) -> None:
        step = int(m["step"])
        if step <= self.start:  # a resumed run's earlier lines: the bar starts past them
            return
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)
        else:  # a restarted attempt goes back to its checkpoint
            self.bar.n = step
            self.bar.refresh()
        parts = [f"loss {m['loss']:.4f}"]
        if "rankme/backbone" in m:
            parts.append(f"rankme {m['rankme/backbone']:.1f}")
        if "throughput/images_per_s" in m:
            parts.append(f"{m['throughput/images_per_s']:.0f} img/s")
        self.bar.set_postfix_str(", ".join(parts), refresh=True)
