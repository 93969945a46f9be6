"""What happened to a run's worker group: failures, preemptions and resizes, in the run directory.

Three files of JSON lines, oldest first, beside the checkpoints:

- ``worker_failures.jsonl``: one line each time workers raised (a killed node, an OOM, a bug):
  ``time`` (Unix seconds), ``ranks`` and, per rank, the error's type and first line. Written by
  :class:`FailureRecorder`, a Ray Train callback that runs in the controller. Workers that died
  because their node was preempted are flagged ``"preempted": true`` and are not counted as
  failures, as Ray Train does not count them against ``max_failures``.
- ``preemptions.jsonl``: one line per preemption notice Ray Train handled (a node of the group
  drained for preemption): ``time`` Ray Train saw it, ``deadline`` (Unix seconds, or null),
  ``nodes``, ``ranks``, and the last checkpoint registered after it, before the restart:
  ``checkpoint_step`` and ``stored_s`` (seconds from the notice; both null when none was, as
  when the notice came too late or the run does not ask for notices). Written by
  :class:`PreemptionRecorder`, in the controller.
- ``resizes.jsonl``: one line each time a worker group resumed on another number of workers
  than the checkpoint it loaded was written by: ``time``, ``step``, ``from``, ``to`` and the
  ``cause``. Written by rank 0 of the new group (:func:`record_resize`).

A file on object storage cannot be appended to, so each record rewrites its file: each file has
one writer at a time (the controller; rank 0 of one group), and the files stay small.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ray.train import UserCallback

from lejepa_ray import compat, storage

log = logging.getLogger(__name__)

FAILURES_FILE = "worker_failures.jsonl"
PREEMPTIONS_FILE = "preemptions.jsonl"
RESIZES_FILE = "resizes.jsonl"
REPEAT_S = 60.0
"""The same preempted workers' deaths reported again within this many seconds of the last
report are the same deaths (Ray Train reports them at every poll while it waits out a
preemption's deadline)."""
NOTICE_COVERS_S = 600.0
"""A preempted worker's death this long after a notice is that notice's preemption, not
another one."""


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
        # The last preempted deaths written, and when Ray Train last reported them.
        self._last_preempted: tuple[tuple[list[int], dict[str, str]], float] | None = None

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        # Ray Train fails the whole run on an error in a controller callback: a record that
        # could not be written must not do that.
        try:
            self._record(worker_exceptions)
        except Exception as e:
            log.warning("could not record the worker failure in %s: %s", self.run_dir, e)

    def _record(self, worker_exceptions: dict[int, Exception]) -> None:
        errors = {
            str(rank): f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
            for rank, e in sorted(worker_exceptions.items())
        }
        record: dict[str, Any] = {
            "time": time.time(),
            "ranks": sorted(worker_exceptions),
            "errors": errors,
        }
        if any(compat.is_preempted(e) for e in worker_exceptions.values()):
            record["preempted"] = True  # Ray Train counts it against max_preemption_failures
            # While Ray Train waits out a preemption's deadline, every poll reports the same
            # dead workers again: one line for them.
            key = (record["ranks"], errors)
            last = self._last_preempted
            if last is not None and last[0] == key and record["time"] - last[1] < REPEAT_S:
                self._last_preempted = (key, record["time"])
                return
            self._last_preempted = (key, record["time"])
        append(f"{self.run_dir}/{FAILURES_FILE}", record)


class PreemptionRecorder(*compat.controller_callback_bases()):  # type: ignore[misc]
    """Writes ``<run_dir>/preemptions.jsonl``: a Ray Train controller callback, the one writer of
    that file. A line when Ray Train learns that a node of the group is being drained for
    preemption (it enters its preempting state), completed with the last checkpoint registered
    before the group is restarted, the one the run resumes from (the workers save it at the
    notice when they ask for notices; see ``fault.preemption_check_steps``)."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.current: dict[str, Any] | None = None

    def after_controller_state_update(self, previous_state: Any, current_state: Any) -> None:
        try:  # an error here would fail the run (see FailureRecorder)
            self._state_changed(current_state)
        except Exception as e:
            log.warning("could not record the preemption in %s: %s", self.run_dir, e)

    def after_report(self, training_report: Any, metrics: list[dict[str, Any]]) -> None:
        try:
            self._reported(training_report, metrics)
        except Exception as e:
            log.warning("could not record the checkpoint after a preemption notice: %s", e)

    def _state_changed(self, current_state: Any) -> None:
        info = compat.preempting(current_state)
        if info is None:
            self.current = None  # restarted, finished or failed: the next notice is a new one
            return
        if self.current is not None:
            return
        self.current = {
            "time": time.time(),
            "deadline": info.deadline_ms / 1000 if info.deadline_ms else None,
            "nodes": info.preempted_node_ids,
            "ranks": info.preempted_ranks,
            "checkpoint_step": None,
            "stored_s": None,
        }
        append(f"{self.run_dir}/{PREEMPTIONS_FILE}", self.current)

    def _reported(self, training_report: Any, metrics: list[dict[str, Any]]) -> None:
        current = self.current
        if current is None or getattr(training_report, "checkpoint", None) is None:
            return
        current["checkpoint_step"] = int(metrics[0].get("step", -1)) if metrics else None
        current["stored_s"] = round(time.time() - current["time"], 3)
        uri = f"{self.run_dir}/{PREEMPTIONS_FILE}"
        records = [current if r["time"] == current["time"] else r for r in read(uri)]
        storage.write_text(uri, "".join(json.dumps(r) + "\n" for r in records))


def counts(run_dir: str) -> dict[str, int]:
    """``failures`` (counted against ``fault.max_failures``), ``preemptions`` (notices Ray Train
    handled, and preempted workers' deaths no notice came before) and ``resizes`` so far."""
    notices = read(f"{run_dir}/{PREEMPTIONS_FILE}")
    failures = read(f"{run_dir}/{FAILURES_FILE}")
    unannounced = [f for f in failures if f.get("preempted") and not _announced(f, notices)]
    return {
        "failures": sum(1 for f in failures if not f.get("preempted")),
        "preemptions": len(notices) + len(unannounced),
        "resizes": len(read(f"{run_dir}/{RESIZES_FILE}")),
    }


def _announced(failure: dict[str, Any], notices: list[dict[str, Any]]) -> bool:
    """Whether ``failure`` is the death of preempted workers that one of ``notices`` announced
    (it came within :data:`NOTICE_COVERS_S` after it)."""
    return bool(failure.get("preempted")) and any(
        0 <= failure["time"] - n["time"] <= NOTICE_COVERS_S for n in notices
    )


def summary(run_dir: str) -> str | None:
    """One console line on the run's failures, preemptions and resizes; None when none."""
    n = counts(run_dir)
    if not any(n.values()):
        return None

    def plural(k: int, what: str) -> str:
        return f"{k} {what}{'' if k == 1 else 's'}"

    notices = read(f"{run_dir}/{PREEMPTIONS_FILE}")
    saved = ""
    if notices:
        steps = ", ".join(
            "none" if r.get("checkpoint_step") is None else str(r["checkpoint_step"])
            for r in notices
        )
        saved = f" (checkpoint after the notice: step {steps})"
    failures = plural(n["failures"], "worker failure")
    return (
        f"{plural(n['preemptions'], 'preemption')}{saved}, {failures}"
        f" (fault.max_failures counts only these), {plural(n['resizes'], 'resize')}; "
        f"records in {run_dir}/{{{PREEMPTIONS_FILE},{FAILURES_FILE},{RESIZES_FILE}}}"
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
        every_notice = read(f"{run_dir}/{PREEMPTIONS_FILE}")
        notices = [r for r in every_notice if r["time"] > since]
        failures = [
            f
            for f in read(f"{run_dir}/{FAILURES_FILE}")
            if f["time"] > since and not _announced(f, every_notice)
        ]
        # The latest event since the previous resize, by time: a notice, or a worker failure
        # (a preempted worker's death that a notice announced is that notice's).
        latest = max([*notices, *failures], key=lambda r: r["time"], default=None)
        if latest is None:
            cause = f"shrank: slots for only {after} workers were free"
        elif "errors" not in latest:
            saved = latest.get("checkpoint_step")
            cause = (
                f"shrank after a preemption (checkpoint after the notice: step {saved})"
                if saved is not None
                else "shrank after a preemption (no checkpoint between the notice and the deadline)"
            )
        elif latest.get("preempted"):
            cause = "shrank after a preemption (no notice before the node went)"
        else:
            first = next(iter(latest["errors"].values()), "an error")
            cause = f"shrank after a worker failure ({first})"
    record = {"time": now, "step": step, "from": before, "to": after, "cause": cause}
    append(f"{run_dir}/{RESIZES_FILE}", record)
    return record
