"""Experiment tracking: every run's metrics in ``metrics.jsonl``, and in MLflow and W&B on request.

Rank 0's :class:`~lejepa_ray.train.metrics.MetricsWriter` hands each log step's metrics to a
:class:`Tracking`, which writes them to

- ``metrics.jsonl`` in the run directory, always: one JSON object per log step
  (``{"step": 120, "time": <unix s>, "loss": ..., ...}``), the same scalars as TensorBoard,
  grep-able and readable with ``pandas.read_json(..., lines=True)``;
- every tracker of :data:`~lejepa_ray.train.trackers.TRACKERS` its config turns on: MLflow
  (``logging.mlflow``) and W&B (``logging.wandb.project``).

One pretraining run is one tracking run, however many attempts it takes. Each tracker's run id
is kept in the checkpoint (``TrainState.tracking``), so a resumed run appends to the run it
started, and in ``tracking.json`` in the run directory, where the driver finds it to add the
probes after training (:func:`log_probes`). A run resumed from step ``k`` first drops the lines
after ``k`` from ``metrics.jsonl`` (an attempt that failed logged them; TensorBoard purges them
too), so each step appears once there; MLflow and W&B keep every point they were sent.

A tracker that cannot log (a tracking server gone for a while) warns once and drops those
points: a multi-day run does not stop for its dashboard. One that cannot start fails the run
before Ray starts (:func:`~lejepa_ray.train.trackers.check`).

The trackers themselves, how each opens, logs and closes a run, and the checks before Ray
starts are :mod:`lejepa_ray.train.trackers`; this module is what a run does with them.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from lejepa_ray import storage
from lejepa_ray.train.config import LoggingConfig
from lejepa_ray.train.trackers import TRACKERS, RunInfo, Tracker

JSONL_FILE = "metrics.jsonl"
IDS_FILE = "tracking.json"

log = logging.getLogger(__name__)


class JsonlLog:
    """``metrics.jsonl``: appended locally, copied to a URI run directory at :meth:`sync`."""

    def __init__(self, run_dir: str, resumed_step: int | None):
        self.run_dir = run_dir
        self.remote = not storage.is_local(run_dir)
        if self.remote:
            self.path = Path(tempfile.mkdtemp(prefix="lejepa-jsonl-"), JSONL_FILE)
        else:
            self.path = Path(run_dir.removeprefix("file://"), JSONL_FILE)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        previous = storage.read_text(self.uri)  # a local path or a URI alike
        # A fresh run starts a fresh file; a resumed one keeps the lines up to its checkpoint.
        kept = "" if resumed_step is None else keep_until(previous or "", resumed_step)
        self.path.write_text(kept)

    @property
    def uri(self) -> str:
        return f"{self.run_dir.rstrip('/')}/{JSONL_FILE}"

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "time": round(time.time(), 3), **metrics}) + "\n")

    def sync(self) -> None:
        self.snapshot()()

    def snapshot(self) -> Callable[[], None]:
        """The copy of the file as it is now to the URI run directory, to run later (in a
        background thread); a no-op for a local run directory."""
        if not self.remote:
            return lambda: None
        text = self.path.read_text()
        return lambda: storage.write_text(self.uri, text)


def keep_until(text: str, step: int) -> str:
    """The lines of a ``metrics.jsonl`` text whose step is at most ``step`` (a line cut short
    by a kill is dropped)."""
    kept = []
    for line in text.splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    return "".join(kept)


class Tracking:
    """Rank 0's tracking for one attempt: ``metrics.jsonl`` and every tracker the config turns
    on, continuing the runs of ``ids`` (from the checkpoint, or ``tracking.json``)."""

    def __init__(
        self,
        cfg: LoggingConfig,
        run: RunInfo,
        ids: Mapping[str, str],
        resumed_step: int | None = None,
    ):
        self.run_dir = run.run_dir
        self.jsonl = JsonlLog(run.run_dir, resumed_step)
        self.trackers: dict[str, Tracker] = {}
        for name, backend in TRACKERS.items():
            if not backend.enabled(cfg):
                continue
            try:
                self.trackers[name] = backend.open(cfg, run, ids.get(name))
            except Exception as e:  # checked before Ray started; a later outage costs the
                # tracker, not the run
                log.warning("%s could not start (%s); training goes on without it", name, e)
        if self.trackers:
            storage.write_text(f"{run.run_dir.rstrip('/')}/{IDS_FILE}", json.dumps(self.ids))
        self._warned: set[str] = set()

    @property
    def ids(self) -> dict[str, str]:
        """Run id by tracker name: what the checkpoint keeps."""
        return {name: tracker.run_id for name, tracker in self.trackers.items()}

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.jsonl.log(step, metrics)
        for name, tracker in self.trackers.items():
            try:
                tracker.log(step, metrics)
            except Exception as e:  # the run goes on without its dashboard; said once
                if name not in self._warned:
                    self._warned.add(name)
                    log.warning("%s could not log step %d (%s); training goes on", name, step, e)

    def snapshot(self) -> Callable[[], None]:
        """:meth:`JsonlLog.snapshot` of ``metrics.jsonl``."""
        return self.jsonl.snapshot()

    def close(self, failed: bool = False) -> None:
        self.jsonl.sync()
        for tracker in self.trackers.values():
            try:
                tracker.close(failed)
            except Exception as e:
                log.warning("could not close the tracking run: %s", e)


def read_ids(run_dir: str) -> dict[str, str]:
    """The tracking run ids ``tracking.json`` of ``run_dir`` holds ({} when none)."""
    text = storage.read_text(f"{run_dir.rstrip('/')}/{IDS_FILE}")
    return {} if text is None else dict(json.loads(text))


def describe(cfg: LoggingConfig, run_dir: str) -> str | None:
    """One console line naming the run's tracking runs, or None when no tracker is on."""
    ids = read_ids(run_dir)
    parts = []
    if "mlflow" in ids and TRACKERS["mlflow"].enabled(cfg):
        parts.append(f"MLflow run {ids['mlflow']} at {cfg.mlflow}")
    if "wandb" in ids and TRACKERS["wandb"].enabled(cfg):
        where = (
            f"{run_dir}/wandb" if storage.is_local(run_dir) else "its wandb/ folder, copied here"
        )
        offline = "" if cfg.wandb.mode == "online" else f" (offline: `wandb sync {where}`)"
        parts.append(f"W&B run {ids['wandb']} in project {cfg.wandb.project}{offline}")
    return f"tracking: {'; '.join(parts)}" if parts else None


def log_probes(cfg: LoggingConfig, run: RunInfo, probes: Mapping[int, Mapping[str, float]]) -> None:
    """Add the probes to the run's tracking, in the driver after training: ``probes`` are
    metrics by step (those during training and the final ones), appended to ``metrics.jsonl``
    and logged to each tracker's run, reopened by the id of ``tracking.json``."""
    if not probes:
        return
    uri = f"{run.run_dir.rstrip('/')}/{JSONL_FILE}"
    lines = "".join(
        json.dumps({"step": step, "time": round(time.time(), 3), **dict(m)}) + "\n"
        for step, m in sorted(probes.items())
    )
    try:
        storage.write_text(uri, (storage.read_text(uri) or "") + lines)
    except OSError as e:  # the run trained and was probed: say so, do not fail it
        log.warning("could not add the probes to %s: %s", uri, e)
    ids = read_ids(run.run_dir)
    for name, backend in TRACKERS.items():
        if not backend.enabled(cfg) or name not in ids:
            continue
        try:
            tracker = backend.open(cfg, run, ids[name])
            for step, m in sorted(probes.items()):
                tracker.log(step, m)
            tracker.close()
        except Exception as e:
            log.warning("could not log the probes to %s: %s", name, e)
