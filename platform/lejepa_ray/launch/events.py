"""What happened to a run's worker group: worker failures and resizes, kept in the run directory.

Two files of JSON lines, oldest first, beside the checkpoints:

- ``worker_failures.jsonl``: one line each time workers raised (a killed node, an OOM, a bug):
  ``time`` (Unix seconds), ``ranks`` and, per rank, the error's type and first line. Written by
  :class:`FailureRecorder`, a Ray Train callback that runs in the controller.
- ``resizes.jsonl``: one line each time a worker group resumed on another number of workers
  than the checkpoint it loaded was written by: ``time``, ``step``, ``from``, ``to`` and the
  ``cause``. Written by rank 0 of the new group (:func:`record_resize`).

A file on object storage cannot be appended to, so each record rewrites its file: there is one
writer at a time (the controller; rank 0 of one group), and the files stay small.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ray.train import UserCallback

from lejepa_ray import storage

FAILURES_FILE = "worker_failures.jsonl"
RESIZES_FILE = "resizes.jsonl"


def append(uri: str, record: dict[str, Any]) -> None:
    """Add ``record`` as the last line of the JSON-lines file at ``uri`` (created if absent)."""
    text = storage.read_text(uri) or ""
    storage.write_text(uri, text + json.dumps(record) + "\n")


def read(uri: str) -> list[dict[str, Any]]:
    """The records of the JSON-lines file at ``uri``, oldest first ([] when there is none)."""
    text = storage.read_text(uri) or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class FailureRecorder(UserCallback):
    """Appends a line to ``<run_dir>/worker_failures.jsonl`` whenever workers raise."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        errors = {
            str(rank): f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
            for rank, e in sorted(worker_exceptions.items())
        }
        append(
            f"{self.run_dir}/{FAILURES_FILE}",
            {"time": time.time(), "ranks": sorted(worker_exceptions), "errors": errors},
        )


def record_resize(run_dir: str, step: int, before: int, after: int) -> dict[str, Any]:
    """Write and return the record of a group of ``before`` workers that resumed at ``step``
    as ``after`` workers. The cause: more free slots when the group grew; when it shrank, the
    last worker failure since the previous resize, if any (otherwise fewer free slots)."""
    now = time.time()
    if after > before:
        cause = f"grew: slots for {after} workers were free"
    else:
        since = max((r["time"] for r in read(f"{run_dir}/{RESIZES_FILE}")), default=0.0)
        failures = [f for f in read(f"{run_dir}/{FAILURES_FILE}") if f["time"] > since]
        if failures:
            first = next(iter(failures[-1]["errors"].values()), "an error")
            cause = f"shrank after a worker failure ({first})"
        else:
            cause = f"shrank: slots for only {after} workers were free"
    record = {"time": now, "step": step, "from": before, "to": after, "cause": cause}
    append(f"{run_dir}/{RESIZES_FILE}", record)
    return record
