"""A run directory as Ray Train leaves it: its name, its root, the checkpoints Ray registered.

Ray Train keeps, in each run directory, a snapshot of the checkpoints it registered (a
checkpoint is registered only once every rank has written it). :func:`latest_checkpoint` reads
that snapshot and returns the newest checkpoint that is complete and was not refused; the
driver resumes from it, the sweep ranks by it, ``lejepa-ray export`` and ``eval`` find it.

Ray is imported only inside :func:`registered`: finding a checkpoint directory given by its
path, and everything below this layer, never needs it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lejepa_ray.compat import RAY_CHECKPOINT_MANAGER_LOGGER, quiet_logger, snapshot_read_error
from lejepa_ray.config import PretrainConfig
from lejepa_ray.errors import CheckpointError
from lejepa_ray.storage import Folder, is_local
from lejepa_ray.train.checkpoint import STATE_FILE, read_state
from lejepa_ray.train.checkpoint_read import METADATA_FILE, Location, Opened, read_metadata

log = logging.getLogger(__name__)

SNAPSHOT_READS = 5
"""How many times :func:`registered` reads a run's snapshot that does not parse, 0.2 s apart:
Ray Train rewrites it in place, so a read beside a live run can catch it half-written."""

STOPPED_FILE = "stopped.json"
"""Written into the run directory when training stopped on non-finite losses."""


def run_name(cfg: PretrainConfig) -> str:
    """``cfg.name``, or ``lejepa-<model>-<YYYYmmdd-HHMMSS>``."""
    return cfg.name or f"lejepa-{cfg.model.name}-{datetime.now():%Y%m%d-%H%M%S}"


def storage_root(cfg: PretrainConfig) -> str:
    """``cfg.storage_path`` made absolute when it is a local path."""
    if not is_local(cfg.storage_path):
        return cfg.storage_path
    return str(Path(cfg.storage_path.removeprefix("file://")).expanduser().resolve())


def find(run_or_checkpoint: Location) -> str:
    """The checkpoint named by a checkpoint directory, or the latest complete checkpoint of a
    run directory (as Ray Train registered it), as a local path or URI.

    Raises:
        CheckpointError: neither a checkpoint nor a run directory with one.
    """
    text = str(run_or_checkpoint).removeprefix("file://")
    if "://" not in text:
        text = str(Path(text).expanduser())
    folder = Folder.at(text)
    if folder.exists(STATE_FILE) or folder.exists(METADATA_FILE):
        return folder.uri
    if not folder.is_dir():
        raise CheckpointError(
            f"{text} does not exist; pass a run directory (runs/<name>) or a "
            "checkpoint directory (runs/<name>/checkpoint_<step>)."
        )
    latest = latest_checkpoint(text)
    if latest is None:
        raise CheckpointError(
            f"{text} holds no completed checkpoint; a run writes one every "
            "checkpoint.every_steps steps and at its end."
        )
    return latest.uri


def registered(run_dir: str) -> list[tuple[Folder, dict]]:
    """The checkpoints Ray Train registered for the run directory (a local path or URI),
    newest first, with the metrics reported beside each. Ray registers a checkpoint only once
    every rank has written it, so an interrupted write is never among them."""
    # lazy: Ray costs seconds to import, and only a run directory's registry needs it.
    from ray.train import Result

    if "://" not in run_dir:
        run_dir = str(Path(run_dir).expanduser().resolve())  # Ray reads a bare path as a URI
    for attempt in range(SNAPSHOT_READS):
        # Ray logs, on finding the snapshot, advice for starting a new run: not what we do here.
        try:
            with quiet_logger(RAY_CHECKPOINT_MANAGER_LOGGER, logging.WARNING):
                result = Result.from_path(run_dir)
            break
        except snapshot_read_error() as e:
            if not isinstance(e.__cause__, json.JSONDecodeError):
                raise  # a snapshot of another Ray version, or of deleted checkpoints: Ray says
            if attempt == SNAPSHOT_READS - 1:
                raise CheckpointError(
                    f"the checkpoint list Ray Train keeps in {run_dir} does not parse ({e}). "
                    "If the run is writing it now, try again; otherwise pass the checkpoint "
                    "directory itself (runs/<name>/checkpoint_<step>)."
                ) from e
            time.sleep(0.2)
        except RuntimeError:  # no checkpoint_manager_snapshot.json: the run never checkpointed
            return []
    kept = [(Folder(c.filesystem, c.path), dict(m or {})) for c, m in result.best_checkpoints or []]
    if not kept and result.checkpoint is not None:
        kept = [(Folder(result.checkpoint.filesystem, result.checkpoint.path), {})]
    return sorted(kept, key=lambda cm: cm[1].get("step", -1), reverse=True)


@dataclass
class Latest:
    """A run's latest complete checkpoint, as :func:`latest_checkpoint` found it."""

    uri: str
    """Where it is: a local path or a URI."""
    metrics: dict
    """The metrics reported with it (``step``, ``data/epoch``, ...)."""
    opened: Opened
    """It, opened: listing checked, state file and index read and verified, for a load to
    go on from without reading them again."""

    @property
    def step(self) -> int:
        return int(self.metrics.get("step", 0))


def latest_checkpoint(run_dir: str) -> Latest | None:
    """The run's latest checkpoint that is complete, or None when it has none."""
    return first_complete(registered(run_dir))


def first_complete(entries: list[tuple[Folder, dict]]) -> Latest | None:
    """The first of :func:`registered`'s ``entries`` whose files match its manifest (sizes,
    small files' checksums) and that no earlier load refused. Each checkpoint passed over is
    logged with the reason, so a user sees the run fall back."""
    for folder, metrics in entries:
        try:
            ckpt = Opened(folder)
            read_state(ckpt)
            read_metadata(ckpt)
        except CheckpointError as e:
            log.warning("passing over checkpoint %s: %s", folder.name(), e)
            continue
        return Latest(folder.uri, metrics, ckpt)
    return None
