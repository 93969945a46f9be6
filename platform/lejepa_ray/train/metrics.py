"""Training metrics: a TensorBoard event file and a console progress line, from rank 0.

TensorBoard writes locally; for a run stored at a URI (``s3://...``) the event files are
written to a local folder and copied next to the checkpoints whenever one is saved.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pyarrow import fs
from torch.utils.tensorboard import SummaryWriter

from lejepa_ray.storage import is_local

TENSORBOARD_DIR = "tensorboard"
# In a Ray Train worker the root logger goes to the driver's console and the worker's log file;
# print() would be captured twice.
log = logging.getLogger(__name__)


class MetricsWriter:
    """Rank 0's metrics sink: scalars to TensorBoard under ``run_dir/tensorboard``, and one
    progress line per log step to the log (which Ray shows on the driver's console)."""

    def __init__(self, run_dir: str, total_steps: int, resumed_step: int | None = None):
        """``resumed_step``: the checkpoint's step when the run resumes; TensorBoard then
        drops the events a failed attempt logged after it, so every step appears once."""
        self.run_dir, self.total_steps = run_dir, total_steps
        if is_local(run_dir):
            self.local_dir = str(Path(run_dir.removeprefix("file://"), TENSORBOARD_DIR))
        else:
            self.local_dir = tempfile.mkdtemp(prefix="lejepa-tb-")
        purge = None if resumed_step is None else resumed_step + 1
        self.writer = SummaryWriter(self.local_dir, purge_step=purge)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()
        log.info(format_line(step, self.total_steps, metrics))

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
        self.writer.add_scalar("resume/load_s", load_seconds, step)
        for rank, count in enumerate(bytes_read):
            self.writer.add_scalar(f"resume/bytes_read/rank_{rank}", count, step)
        if bytes_total:
            self.writer.add_scalar("resume/bytes_total", bytes_total, step)
        self.writer.flush()

    def sync(self) -> None:
        """Copy the event files to the run directory when it is remote."""
        self.writer.flush()
        if not is_local(self.run_dir):
            fs.copy_files(self.local_dir, f"{self.run_dir.rstrip('/')}/{TENSORBOARD_DIR}")

    def close(self) -> None:
        self.sync()
        self.writer.close()


def format_line(step: int, total_steps: int, m: dict[str, float]) -> str:
    """One console progress line."""
    parts = [
        f"step {step}/{total_steps}",
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
