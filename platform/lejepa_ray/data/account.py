"""Where Ray Data's time goes in the views pipeline, in Ray's own terms.

Two sources, read after an epoch has been consumed:

- ``Dataset.get_stats_summary()``, per operator: its tasks' remote wall and CPU time, split
  by Ray Data into input preparation (blocks to the UDF's batch format), the UDF's body and
  output building (batches back to blocks).
- ``ray.timeline()``: every task's execute span and worker, from which the slot occupancy (for
  how long 0, 1, 2, ... view tasks executed at once) and the gaps between one worker's tasks.

The summary also has an iterator part (where the consuming thread was blocked: production
wait, transfer, batching, format, collate); Ray 2.60 leaves it at zero for the iterators a
``Dataset`` hands out (observed on every epoch of ``data bench``), so the consumer's share is
taken from its process's CPU time instead (``bench_cpu.CpuAccount``).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

VIEWS_OPERATOR = "make_views"
"""The name Ray Data gives the views transform's operator and tasks contains this."""

TASK_STAGES = (
    ("input_prep", "input_prep_time"),
    ("udf", "function_body_time"),
    ("output_build", "output_build_time"),
)
"""(our key, the ``OperatorStatsSummary`` field): a map task's wall time by stage."""


def operator_account(summary: Any, name: str = VIEWS_OPERATOR) -> dict[str, float]:
    """Per-sample milliseconds of the operator whose name contains ``name``, over the rows it
    produced in the summary's execution.

    Args:
        summary: ``Dataset.get_stats_summary()`` of the last execution.

    Returns:
        ``rows`` and ``tasks`` (counts), ``wall_ms``, ``cpu_ms`` and ``<stage>_ms`` for each of
        :data:`TASK_STAGES` that Ray recorded; empty when no such operator produced a row.
    """
    op = find_operator(summary, name)
    if op is None or op.output_num_rows is None or not op.output_num_rows.sum:
        return {}
    rows = op.output_num_rows.sum
    out: dict[str, float] = {"rows": float(rows)}
    if op.task_rows is not None:
        out["tasks"] = float(op.task_rows.count)
    for key, field in (("wall", "wall_time"), ("cpu", "cpu_time"), *TASK_STAGES):
        stat = getattr(op, field, None)
        if stat is not None:
            out[f"{key}_ms"] = 1e3 * stat.sum / rows
    return out


def find_operator(summary: Any, name: str = VIEWS_OPERATOR) -> Any | None:
    """The ``OperatorStatsSummary`` of ``summary`` whose name contains ``name``, or None."""
    return next((op for op in summary.operators_stats if name in op.operator_name), None)


def task_spans(
    events: Iterable[dict], name: str = VIEWS_OPERATOR
) -> list[tuple[str, float, float]]:
    """(worker, start s, end s) of every task in a ``ray.timeline()`` whose name contains
    ``name``, in start order."""
    spans = [
        (e["tid"], e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6)
        for e in events
        if e.get("ph") == "X" and e.get("cat", "").startswith("task::") and name in e["cat"]
    ]
    return sorted(spans, key=lambda s: s[1])


def slot_account(
    spans: list[tuple[str, float, float]], windows: list[tuple[float, float]]
) -> dict[str, Any]:
    """Occupancy of the transform slots over the measured ``windows`` ((start, end) seconds on
    the ``time.time()`` clock, the timeline's).

    Returns:
        ``window_s``: the windows' total; ``occupancy_s``: {k: seconds during which exactly k
        tasks executed}, adding up to ``window_s``; ``tasks``: tasks that started inside a
        window, and ``task_ms`` their mean whole duration; ``gap_ms``: the mean gap between one
        worker's consecutive tasks (a Ray worker may run another operator's task, a read, in
        it). Means are None when there is nothing to average.
    """
    occupancy: dict[int, float] = collections.defaultdict(int)  # seconds per k, from 0
    durations: list[float] = []
    gaps: list[float] = []
    for start, end in windows:
        inside = [(w, max(a, start), min(b, end)) for w, a, b in spans if b > start and a < end]
        edges = sorted([(a, 1) for _, a, _ in inside] + [(b, -1) for _, _, b in inside])
        running, last = 0, start
        for t, step in edges:
            if t > last:
                occupancy[running] += t - last
            running, last = running + step, t
        occupancy[0] += end - last  # idle after the last task, or all of an empty window
        previous: dict[str, float] = {}
        for worker, a, b in inside:
            if worker in previous:
                gaps.append(a - previous[worker])
            previous[worker] = b
        durations += [b - a for _, a, b in spans if start <= a < end]
    return {
        "window_s": round(sum(end - start for start, end in windows), 3),
        "occupancy_s": {str(k): round(v, 3) for k, v in sorted(occupancy.items()) if v > 0},
        "tasks": len(durations),
        "task_ms": 1e3 * sum(durations) / len(durations) if durations else None,
        "gap_ms": 1e3 * sum(gaps) / len(gaps) if gaps else None,
    }
