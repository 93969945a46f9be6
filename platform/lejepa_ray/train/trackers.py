"""The trackers a run can log to besides ``metrics.jsonl``: MLflow and W&B, each one open
tracking run behind the :class:`Tracker` protocol, by name in :data:`TRACKERS`.

A tracker is opened for a run (:class:`RunInfo`: its directory, name and config), new or
continued by the run id a checkpoint kept, and logs each log step's metrics at the optimizer
step. :func:`check` runs in the driver before Ray starts, so that a tracker that is not
installed, a server that does not answer or a missing W&B key fails the run at once.

:class:`~lejepa_ray.train.tracking.Tracking` (rank 0, every attempt) opens the trackers the
config turns on beside ``metrics.jsonl``, and :func:`~lejepa_ray.train.tracking.log_probes`
reopens them in the driver for the probes; both are in :mod:`lejepa_ray.train.tracking`, which
also says how one pretraining run stays one tracking run across attempts. MLflow and W&B are
optional (the tracking extra): each is imported only when the config turns it on.
"""

from __future__ import annotations

import importlib.util
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
    # INFO on a handler of its own; the driver names the run once
    # (:func:`~lejepa_ray.train.tracking.describe`).
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
