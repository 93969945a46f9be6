"""Sharded, resumable checkpoints with ``torch.distributed.checkpoint`` (DCP).

One checkpoint directory holds (Ray merges every rank's directory into it, so every name a rank
writes is unique to that rank):

- ``__<rank>_0.distcp``: the rank's shards of the model and the optimizer state (every rank);
- ``.metadata``: DCP's index of every shard (rank 0);
- ``rng/rank_<rank>.json``: the rank's RNG states (torch, CUDA, numpy, Python);
- ``state.json``: step, LR schedule, data epoch and position, skipped steps, world size
  (rank 0);
- ``config.yaml``: the run's config (rank 0);
- ``manifest.json``: every file above with its size and checksum, and a checksum per stored
  tensor (rank 0, last; see :mod:`lejepa_ray.train.manifest`).

Checkpoints are read where they lie, on a local disk or in object storage (``s3://``), through
pyarrow's filesystems: a rank fetches the index, then only the byte ranges of the tensors it
loads (its own shards under FSDP2; the model without the optimizer for the probe and exports),
and checks each range against the manifest as it reads it.

The same code saves DDP replicas and FSDP2 shards: DCP's state-dict helpers give plain parameter
names under either wrapper, and DCP reshards on load, so a checkpoint resumes on any world size
and strategy, and loads in one process (no process group) for the probe and exports.

The optimizer's tensors (AdamW moments and step counts) are saved; its hyperparameters are not:
they come from the config of the run that resumes, and the learning rate from the restored
schedule. So every value in a checkpoint is a tensor or JSON, and loading unpickles nothing but
DCP's own index, through an allow-list
(:func:`~lejepa_ray.train.checkpoint_read.read_metadata`).

This module is the layout and its entry points: :func:`write` and :func:`save`, :func:`load`
and :func:`load_model_weights`, :func:`read_state`, :func:`read_config` and
:func:`check_model`, and the classes a run saves through them (:class:`TrainState`,
:class:`ModelAndOptimizer`). Opening a checkpoint and reading its small files verified is
:mod:`lejepa_ray.train.checkpoint_read`; reading its tensors,
:mod:`lejepa_ray.train.checkpoint_shards`; the RNG states, :mod:`lejepa_ray.train.rng`.
"""

from __future__ import annotations

import json
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from lejepa_ray.errors import CheckpointError
from lejepa_ray.train import manifest as mf
from lejepa_ray.train.checkpoint_read import Location, Opened, read_metadata
from lejepa_ray.train.checkpoint_shards import check_tensors, read_into
from lejepa_ray.train.rng import rng_file, rng_state, set_rng_state

STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"
FORMAT = 1
"""Version of the layout above; bumped when it changes incompatibly."""


@dataclass
class TrainState:
    """The non-tensor state of a run at a checkpoint (``state.json``)."""

    step: int
    """Optimizer steps taken (skipped non-finite steps included)."""
    world_size: int = 1
    """Ranks that wrote the checkpoint."""
    skipped_steps: int = 0
    """Steps skipped so far because their loss or gradient was not finite."""
    data_epoch: int = 0
    """The data epoch the run was in."""
    data_samples: int = 0
    """Rows of that epoch drawn from the stream, over all ranks: its position in the epoch."""
    scheduler: dict = field(default_factory=dict)
    """The LR scheduler's ``state_dict()``."""
    model: str = ""
    """timm name of the backbone, for error messages."""
    tracking: dict[str, str] = field(default_factory=dict)
    """Tracking run ids by tracker (``lejepa_ray.train.tracking``): a resumed run continues
    them. Missing in checkpoints written before tracking: none then."""
    format: int = FORMAT


class ModelAndOptimizer:
    """The tensors of a model and its optimizer, as DCP saves and loads them (a
    ``torch.distributed.checkpoint.stateful.Stateful``).

    DCP's state-dict helpers name parameters the same under DDP, FSDP2 or neither, which is
    what lets a checkpoint reshard. Only the optimizer's tensors are kept (AdamW moments and
    step counts): its hyperparameters come from the config of the run that loads them."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer
        self._param_groups: Any = None  # DCP's param_groups, as state_dict() last gave them

    def state_dict(self) -> dict:
        """``{"model": {name: tensor}, "optim": {"state": {name: {moment: tensor}}}}``;
        sharded tensors (DTensor) under FSDP2."""
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        self._param_groups = optim_state["param_groups"]
        return {"model": model_state, "optim": {"state": optim_state["state"]}}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load what :meth:`state_dict` returned, filled in place by DCP."""
        if self._param_groups is None:  # DCP fills a state_dict() it asked for first
            self.state_dict()
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state_dict["model"],
            optim_state_dict={
                "state": state_dict["optim"]["state"],
                "param_groups": self._param_groups,
            },
        )


def write(path: str | Path, tensors: Stateful, state: TrainState, config_yaml: str) -> mf.Part:
    """Write this rank's shards of ``tensors`` and its RNG states to the local directory
    ``path``; rank 0 adds ``state.json`` and ``config.yaml``. No manifest: :func:`save` adds
    it, or each rank's upload (``train.upload``). Call on every rank at the same step (DCP's
    save is collective). Replicated buffers must already agree across ranks (the trainer's
    ``sync_buffers``): DCP saves one rank's copy."""
    # No fsync (nor in save): the upload, reading them back from the page cache, is what makes
    # a run's checkpoint durable.
    writer = FileSystemWriter(str(path), sync_files=False)
    with warnings.catch_warnings():  # DCP warns when it saves in one process: we mean to
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        metadata = dcp.save(
            tensors.state_dict(), storage_writer=writer, no_dist=not dist.is_initialized()
        )
    rng = Path(path, rng_file(_rank()))
    rng.parent.mkdir(exist_ok=True)
    rng.write_text(json.dumps(rng_state()))
    if _rank() == 0:
        Path(path, CONFIG_FILE).write_text(config_yaml)
        Path(path, STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
    # Each shard file's storage items, checksummed one by one (see train.manifest).
    chunks: dict[str, list[tuple[int, int]]] = {}
    for info in (metadata.storage_data or {}).values():
        chunks.setdefault(info.relative_path, []).append((info.offset, info.length))
    world, token = 1, [uuid.uuid4().hex]
    if dist.is_initialized():
        world = dist.get_world_size()
        dist.broadcast_object_list(token, src=0)  # rank 0's, on every rank
    return mf.Part(str(path), _rank(), world, chunks, token[0])


def save(path: str | Path, tensors: Stateful, state: TrainState, config_yaml: str) -> None:
    """:func:`write`, then rank 0 writes, last, the manifest of every rank's files. Call on
    every rank at the same step; the ranks may share ``path`` (the manifest's gather is
    collective)."""
    part = write(path, tensors, state, config_yaml)
    parts: list = [None] * part.world
    if dist.is_initialized():
        dist.barrier()  # a shared directory: every rank's files are whole before any reads them
        dist.all_gather_object(parts, part.describe())
    else:
        parts = [part.describe()]
    if part.rank == 0:
        # Written last: a checkpoint with a manifest had all its files written first.
        Path(path, mf.MANIFEST_FILE).write_text(json.dumps(mf.merge(parts)))


def load(
    location: Location | Opened,
    tensors: Stateful,
    *,
    model_name: str | None = None,
    stats: dict | None = None,
) -> TrainState:
    """Load the checkpoint at ``location`` into ``tensors`` (resharding to this run's world
    size and strategy) and, at the same world size, this rank's RNG states; return its
    :class:`TrainState` for the caller to restore its schedule and counters from.

    This rank reads only the byte ranges of the tensors it holds, verified against the
    manifest. ``model_name`` (the config's) makes a checkpoint of another model fail with both
    names. ``stats``, when given, receives ``bytes_read`` (by this rank, the checks of an
    :class:`Opened` passed in included) and ``bytes_total`` (the checkpoint's size). Call on
    every rank (DCP's load is collective when a process group exists).

    Raises:
        CheckpointError: incomplete or corrupt files, or a checkpoint of another model.
    """
    ckpt = location if isinstance(location, Opened) else Opened(location)
    state = _read_state(ckpt)
    target = tensors.state_dict()
    read_into(ckpt, target, model_name=model_name, saved_model=state.model)
    tensors.load_state_dict(target)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world == state.world_size and ckpt.has(rng_file(_rank())):
        set_rng_state(json.loads(ckpt.read(rng_file(_rank()), "this rank's RNG states")))
    if stats is not None:
        stats.update(bytes_read=ckpt.folder.bytes_read, bytes_total=sum(ckpt.listing.values()))
    return state


def load_model_weights(location: Location, model: nn.Module) -> int:
    """Load the encoder weights of the checkpoint at ``location`` into the unsharded ``model``
    (in this process, no process group); returns the checkpoint's step. Reads the model's
    tensors only, not the optimizer's.

    Raises:
        CheckpointError: incomplete or corrupt files, or a checkpoint of another model.
    """
    ckpt = Opened(location)
    state = _read_state(ckpt)
    target = {"model": model.state_dict()}
    read_into(ckpt, target, model_name=None, saved_model=state.model)
    model.load_state_dict(target["model"])
    return state.step


def read_state(location: Location | Opened) -> TrainState:
    """``state.json`` of the checkpoint at ``location``.

    Raises:
        CheckpointError: no such checkpoint, or its state file is missing or unreadable.
    """
    return _read_state(location if isinstance(location, Opened) else Opened(location))


def read_config(location: Location) -> str:
    """The run's config (YAML text) saved in the checkpoint at ``location``.

    Raises:
        CheckpointError: no such checkpoint, or no config in it.
    """
    return _read_config(Opened(location))


def _read_config(ckpt: Opened) -> str:
    return ckpt.read(CONFIG_FILE, "it holds the run's config").decode()


def _read_state(ckpt: Opened) -> TrainState:
    data = ckpt.read(STATE_FILE, "it is not a lejepa-ray checkpoint, or was interrupted")
    try:
        state = TrainState(**json.loads(data))
    except (ValueError, TypeError) as e:
        raise CheckpointError(
            f"{ckpt.folder}/{STATE_FILE} is corrupt ({e}); use an earlier checkpoint."
        ) from None
    if state.format != FORMAT:
        raise CheckpointError(
            f"{ckpt.folder} has checkpoint format {state.format}; this version of "
            f"lejepa-ray reads format {FORMAT}."
        )
    return state


def check_model(location: Location, model: nn.Module, model_name: str | None = None) -> None:
    """Raise CheckpointError unless the checkpoint at ``location`` holds every tensor of
    ``model`` (unsharded; the meta device will do) with the same shape. Reads the index and the
    state file only."""
    ckpt = Opened(location)
    check_tensors(
        ckpt.folder,
        read_metadata(ckpt),
        {"model": model.state_dict()},
        model_name=model_name,
        saved_model=_read_state(ckpt).model,
    )


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0
