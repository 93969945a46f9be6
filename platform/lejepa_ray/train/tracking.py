"""Experiment tracking: every run's metrics in ``metrics.jsonl``, and in MLflow and W&B on request.

Rank 0's :class:`~lejepa_ray.train.metrics.MetricsWriter` hands each log step's metrics to a
:class:`Tracking`, which writes them to

- ``metrics.jsonl`` in the run directory, always: one JSON object per log step
  (``{"step": 120, "time": <unix s>, "loss": ..., ...}``), the same scalars as TensorBoard,
  grep-able and readable with ``pandas.read_json(..., lines=True)``;
- every tracker of :data:`TRACKERS` its config turns on: MLflow (``logging.mlflow``) and W&B
  (``logging.wandb.project``).

One pretraining run is one tracking run, however many attempts it takes. Each tracker's run id
is kept in the checkpoint (``TrainState.tracking``), so a resumed run appends to the run it
started, and in ``tracking.json`` in the run directory, where the driver finds it to add the
probes after training (:func:`log_probes`). A run resumed from step ``k`` first drops the lines
after ``k`` from ``metrics.jsonl`` (an attempt that failed logged them; TensorBoard purges them
too), so each step appears once there; MLflow and W&B keep every point they were sent.

A tracker that cannot log (a tracking server gone for a while) warns once and drops those
points: a multi-day run does not stop for its dashboard. One that cannot start fails the run
before Ray starts (:func:`check`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lejepa_ray import storage
from lejepa_ray.errors import ConfigError, option
from lejepa_ray.train.config import LoggingConfig

JSONL_FILE = "metrics.jsonl"
IDS_FILE = "tracking.json"
DEFAULT_EXPERIMENT = "lejepa-ray"
INSTALL = "pip install 'lejepa-ray[tracking]'"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunInfo:
    """What a tracker files a run under."""

    run_dir: str
    """The run directory (local path or URI)."""
    name: str
    """The run's name (``PretrainConfig.name``): the tracking run's name."""
    config: dict[str, Any]
    """The run's config as nested plain values: MLflow parameters, W&B config."""
    config_yaml: str
    """The same config as ``config.yaml`` holds it, attached to the tracking run."""


class Tracker(Protocol):
    """One open tracking run."""

    run_id: str

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record ``metrics`` at optimizer step ``step`` (steps may repeat after a resume)."""

    def close(self, failed: bool = False) -> None:
        """End this process's use of the run; ``failed``: the attempt ended on an error."""


@dataclass(frozen=True)
class Backend:
    """A tracker kind: whether a config turns it on, and how to open (or reopen) its run."""

    enabled: Callable[[LoggingConfig], bool]
    open: Callable[[LoggingConfig, RunInfo, str | None], Tracker]
    """(config, run, the run id to continue or None for a new run) -> the open run."""
    module: str
    """The package it needs, checked before Ray starts."""
    setting: str
    """The config key that turns it on, for error messages."""


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": "0.1"}``: MLflow parameters are flat strings."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


class MlflowTracker:
    """An MLflow run, through ``MlflowClient`` (no process-global active run, so the driver and
    a worker in one process cannot mix their runs)."""

    def __init__(self, cfg: LoggingConfig, run: RunInfo, run_id: str | None):
        client = mlflow_client(cfg)
        assert cfg.mlflow is not None
        if run_id is not None and _run_exists(client, run_id):
            client.update_run(run_id, status="RUNNING")
        else:
            if run_id is not None:  # another tracking server, or the run was deleted there
                log.warning("MLflow run %s is not at %s; starting a new one", run_id, cfg.mlflow)
            experiment_id = _experiment(client, cfg.group or DEFAULT_EXPERIMENT, cfg.mlflow)
            run_id = client.create_run(experiment_id, run_name=run.name).info.run_id
            # The config: flat parameters to filter and compare runs by, and the YAML itself
            # (the client splits the parameters into batches of MLflow's limits).
            client.log_batch(run_id, params=_params(flatten(run.config)))
            client.log_text(run_id, run.config_yaml, "config.yaml")
            client.set_tag(run_id, "run_dir", run.run_dir)
        self.client, self.run_id = client, run_id

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        # lazy: optional dependency (see mlflow_client)
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        # Asynchronous: MLflow's own thread sends them, so a slow or restarting server never
        # holds rank 0 (and with it, at the next report, every rank).
        self.client.log_batch(self.run_id, metrics=points, synchronous=False)

    def close(self, failed: bool = False) -> None:
        # lazy: optional dependency (see mlflow_client)
        import mlflow

        mlflow.flush_async_logging()
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


def mlflow_client(cfg: LoggingConfig) -> Any:
    """A quiet ``MlflowClient`` for ``logging.mlflow``."""
    # MLflow prints a "View run" URL at every run end and logs its database migrations at
    # INFO on a handler of its own; the driver names the run once (:func:`describe`).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # lazy: an optional dependency (the tracking extra), imported only when turned on
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return MlflowClient(cfg.mlflow)


def _run_exists(client: Any, run_id: str) -> bool:
    # lazy: optional dependency (see mlflow_client)
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def _experiment(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created when missing. Concurrent trials of a sweep
    create it at once: the loser of that race looks it up again. A local store (SQLite or a
    folder) keeps the artifacts beside itself, not in each process's working directory."""
    # lazy: optional dependency (see mlflow_client)
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = _local_artifacts(uri)
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def _local_artifacts(uri: str) -> str | None:
    """``<the database's folder>/mlartifacts`` for a SQLite or file store; None for a server."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts")
    if uri.startswith(("file:", "/")):  # a folder (LoggingConfig made it absolute)
        return str(Path(uri.removeprefix("file://").removeprefix("file:")) / "artifacts")
    return None


def _params(flat: dict[str, str]) -> list[Any]:
    # lazy: optional dependency (see MlflowTracker)
    from mlflow.entities import Param

    # MLflow refuses parameter values over 6,000 characters; a long list is cut, not fatal.
    return [Param(k, v if len(v) <= 6000 else v[:5997] + "...") for k, v in flat.items()]


class WandbTracker:
    """A W&B run. Its x-axis is the logged ``step`` metric, not W&B's own step counter, which
    only grows: a resumed run logs the steps after its checkpoint again, and W&B would drop
    them."""

    def __init__(self, cfg: LoggingConfig, run: RunInfo, run_id: str | None):
        # lazy: an optional dependency (the tracking extra), imported only when turned on
        import wandb

        # W&B writes under ``<dir>/wandb``: the run directory's own when it is local.
        self.run_dir = run.run_dir
        if storage.is_local(run.run_dir):
            self.local_dir = run.run_dir.removeprefix("file://")
            Path(self.local_dir).mkdir(parents=True, exist_ok=True)
        else:  # a temporary folder, copied next to the checkpoints on close
            self.local_dir = tempfile.mkdtemp(prefix="lejepa-wandb-")
        self.run = wandb.init(
            project=cfg.wandb.project,
            group=cfg.group,
            name=run.name,
            id=run_id,
            resume="allow",
            mode=cfg.wandb.mode,  # type: ignore[arg-type]  # checked by WandbConfig
            dir=self.local_dir,
            config=run.config if run_id is None else None,
            # Quiet: no banner, no console capture of the worker's output, no system sampling.
            # symlink=False: no latest-run/ links, which an upload to object storage would copy
            # as a second copy of the run for `wandb sync`.
            settings=wandb.Settings(
                silent=True, console="off", x_disable_stats=True, symlink=False
            ),
            reinit="create_new",
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.run_id = self.run.id

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log({**metrics, "step": step})

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)
        if not storage.is_local(self.run_dir):
            storage.upload(f"{self.local_dir}/wandb", f"{self.run_dir.rstrip('/')}/wandb")


TRACKERS: dict[str, Backend] = {
    "mlflow": Backend(lambda c: c.mlflow is not None, MlflowTracker, "mlflow", "logging.mlflow"),
    "wandb": Backend(
        lambda c: c.wandb.project is not None, WandbTracker, "wandb", "logging.wandb.project"
    ),
}
"""Tracker kinds by name: the name is the key of its run id in checkpoints and ``tracking.json``."""


def check(cfg: LoggingConfig) -> None:
    """Before Ray starts: every tracker the config turns on is installed.

    Raises:
        ConfigError: naming the setting and the install command.
    """
    for backend in TRACKERS.values():
        if backend.enabled(cfg) and importlib.util.find_spec(backend.module) is None:
            raise ConfigError(
                f"{backend.setting} is set, but {backend.module} is not installed: {INSTALL}, "
                f"or unset {backend.setting}."
            )
    if cfg.mlflow is not None:
        _check_mlflow(cfg)
    if cfg.wandb.project is not None and cfg.wandb.mode == "online" and not _wandb_key():
        raise ConfigError(
            "logging.wandb.mode=online needs a W&B API key: set WANDB_API_KEY (on every node "
            "of a cluster) or run `wandb login`; or log offline with "
            f"{option('logging.wandb.mode')}=offline and upload later with `wandb sync`."
        )


def _check_mlflow(cfg: LoggingConfig) -> None:
    """Reach the tracking server once, quickly (MLflow's own retries take minutes)."""
    limits = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    before = {k: os.environ.get(k) for k in limits}
    os.environ.update(limits)
    try:
        mlflow_client(cfg).search_experiments(max_results=1)
    except Exception as e:
        raise ConfigError(
            f"logging.mlflow={cfg.mlflow!r}: the tracking server did not answer "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Start it, fix the "
            "URI (http://host:5000, sqlite:///path/mlflow.db), or unset logging.mlflow."
        ) from None
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _wandb_key() -> bool:
    """Whether this machine has a W&B API key: ``WANDB_API_KEY``, or ``wandb login``'s entry in
    the netrc file."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace")


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
