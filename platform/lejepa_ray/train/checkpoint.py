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
DCP's own index, through an allow-list (:func:`read_metadata`).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import pickle
import random
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from pyarrow import fs as pafs
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystemBase
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from lejepa_ray.errors import CheckpointError
from lejepa_ray.storage import Folder
from lejepa_ray.train import manifest as mf

log = logging.getLogger(__name__)

Location = str | Path | Folder
"""A checkpoint directory: a local path, a URI (``s3://bucket/runs/r/checkpoint_00000008``) or
a :class:`~lejepa_ray.storage.Folder`."""

STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"
METADATA_FILE = ".metadata"
REFUSED_FILE = "refused.json"
"""Written into a checkpoint that failed verification while a run loaded it, so that the
restarted attempt, and every later resume, pass it over."""
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
    rng = Path(path, _rng_name())
    rng.parent.mkdir(exist_ok=True)
    rng.write_text(json.dumps(_rng_state()))
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


class Opened:
    """A checkpoint directory whose listing was checked against its manifest: every file the
    manifest names is there with its size. Its small files and tensor byte ranges are verified
    as they are read; ``folder.bytes_read`` counts what was fetched."""

    def __init__(self, location: Location):
        self.folder = location if isinstance(location, Folder) else Folder.at(str(location))
        self.listing = self.folder.files()
        if not self.listing:
            raise CheckpointError(f"no checkpoint at {self.folder} (no such directory, or empty).")
        refused = self.listing.get(REFUSED_FILE) is not None
        if refused:
            reason = json.loads(self.folder.read(REFUSED_FILE) or b"{}").get("reason", "")
            raise CheckpointError(f"{self.folder} was refused earlier: {reason}")
        self.manifest: mf.Manifest | None = None
        self.metadata: Metadata | None = None
        self._verified: dict[str, bytes] = {}  # small files already read, so read once
        if mf.MANIFEST_FILE not in self.listing:
            log.warning(
                "%s has no %s (written by lejepa-ray before 0.2, or interrupted): its files "
                "are checked by structure and size only, not by checksum.",
                self.folder,
                mf.MANIFEST_FILE,
            )
            return
        try:
            self.manifest = mf.Manifest.parse(self.folder.read(mf.MANIFEST_FILE) or b"")
            self.manifest.check_listing(self.listing)
        except mf.ManifestMismatch as e:
            raise _corrupt(self.folder, e) from None

    def read(self, name: str, what: str) -> bytes:
        """The file ``name``, verified; ``what`` says in an error why it is needed."""
        if name not in self.listing:
            raise CheckpointError(
                f"{self.folder} has no {name}: {what}. The checkpoint is incomplete "
                "(interrupted while being written); use an earlier checkpoint of the run."
            )
        if name in self._verified:
            return self._verified[name]
        data = self.folder.read(name) or b""
        if self.manifest is not None:
            try:
                self.manifest.check_file(name, data)
            except mf.ManifestMismatch as e:
                raise _corrupt(self.folder, e) from None
        self._verified[name] = data
        return data

    def has(self, name: str) -> bool:
        return name in self.listing


def _corrupt(folder: Folder, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {folder} is corrupt: {error}. Use an earlier checkpoint of the run."
    )


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
    _read_into(ckpt, target, model_name=model_name, saved_model=state.model)
    tensors.load_state_dict(target)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world == state.world_size and ckpt.has(_rng_name()):
        _set_rng_state(json.loads(ckpt.read(_rng_name(), "this rank's RNG states")))
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
    _read_into(ckpt, target, model_name=None, saved_model=state.model)
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


# Everything DCP's index pickles: its own dataclasses, torch sizes, dtypes and layouts, and the
# path it was saved to. Anything else in a .metadata file is refused, never constructed.
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def read_metadata(location: Location | Opened) -> Metadata:
    """DCP's index of the checkpoint at ``location``, unpickled through an allow-list of DCP's
    own classes (DCP itself would ``pickle.load`` it).

    Raises:
        CheckpointError: missing, corrupt, or holding objects other than DCP's index.
    """
    ckpt = location if isinstance(location, Opened) else Opened(location)
    if ckpt.metadata is not None:
        return ckpt.metadata
    data = ckpt.read(METADATA_FILE, "DCP's index of the shards")
    try:
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    except Exception as e:  # truncated, garbage, or a refused class
        raise CheckpointError(
            f"{ckpt.folder}/{METADATA_FILE} is corrupt or not a DCP index ({e}); use an "
            "earlier checkpoint."
        ) from None
    if not isinstance(metadata, Metadata):
        raise CheckpointError(
            f"{ckpt.folder}/{METADATA_FILE} is not a DCP index (it holds a {type(metadata)})."
        )
    ckpt.metadata = metadata  # read once, however many steps of a load need it
    return metadata


class _ArrowFiles(FileSystemBase):
    """DCP's file interface, read-only, over a pyarrow filesystem (local disk or S3)."""

    def __init__(self, filesystem: pafs.FileSystem):
        self.filesystem = filesystem

    @contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Iterator[Any]:
        if mode != "rb":
            raise NotImplementedError("checkpoints are written locally and uploaded by Ray")
        with self.filesystem.open_input_file(str(path)) as f:
            yield f

    def concat_path(self, path: str | os.PathLike, suffix: str) -> str:
        return f"{path}/{suffix}"

    def init_path(self, path: str | os.PathLike) -> str:
        return str(path)

    def exists(self, path: str | os.PathLike) -> bool:
        return self.filesystem.get_file_info(str(path)).type != pafs.FileType.NotFound

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return False

    def rename(self, path: str | os.PathLike, new_path: str | os.PathLike) -> None:
        raise NotImplementedError

    def mkdir(self, path: str | os.PathLike) -> None:
        raise NotImplementedError

    def rm_file(self, path: str | os.PathLike) -> None:
        raise NotImplementedError

    def ls(self, path: str | os.PathLike) -> list[str]:
        raise NotImplementedError


class _VerifyingReader(FileSystemReader):
    """DCP's file reader over a checkpoint wherever it lies: the index read by
    :func:`read_metadata`, each tensor fetched as one byte range and checked against the
    manifest before ``torch.load(weights_only=True)`` (DCP's) parses it."""

    def __init__(self, ckpt: Opened):
        super().__init__(ckpt.folder.path)
        self.ckpt = ckpt
        self.fs = _ArrowFiles(ckpt.folder.filesystem)  # type: ignore[assignment]  # DCP types it as its own FileSystem, but reads it through FileSystemBase's interface
        self.path = ckpt.folder.path

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_metadata(self.ckpt)
        metadata.storage_meta = metadata.storage_meta or StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def _slice_file(self, file: Any, sinfo: Any) -> io.BytesIO:
        data = self.ckpt.folder.read_at(file, sinfo.offset, sinfo.length)
        if self.ckpt.manifest is not None:
            try:
                self.ckpt.manifest.check_range(
                    sinfo.relative_path, sinfo.offset, sinfo.length, data
                )
            except mf.ManifestMismatch as e:
                raise _corrupt(self.ckpt.folder, e) from None
        return io.BytesIO(data)


def check_model(location: Location, model: nn.Module, model_name: str | None = None) -> None:
    """Raise CheckpointError unless the checkpoint at ``location`` holds every tensor of
    ``model`` (unsharded; the meta device will do) with the same shape. Reads the index and the
    state file only."""
    ckpt = Opened(location)
    _check_tensors(
        ckpt.folder,
        read_metadata(ckpt),
        {"model": model.state_dict()},
        model_name=model_name,
        saved_model=_read_state(ckpt).model,
    )


def _check_tensors(
    path: str | Path | Folder,
    metadata: Metadata,
    target: dict,
    *,
    model_name: str | None,
    saved_model: str,
) -> None:
    saved = metadata.state_dict_metadata
    wanted = dict(_flatten(target))
    missing = [k for k in wanted if k not in saved]
    # Entries DCP stores pickled; never requested here, so never unpickled (a checkpoint of
    # another program may hold some beside the tensors we read).
    pickled = [k for k in wanted if k in saved and not isinstance(saved[k], TensorStorageMetadata)]
    # The checkpoint's model tensors this model lacks: a bigger model of the same family
    # (resnet34 against resnet18) holds all of the smaller one's tensors with their shapes.
    extra = [k for k in saved if k.startswith("model.") and k not in wanted]
    sizes = {k: tuple(m.size) for k, m in saved.items() if isinstance(m, TensorStorageMetadata)}
    wrong = [
        f"{k}: checkpoint {sizes[k]}, model {tuple(v.shape)}"
        for k, v in wanted.items()
        if k in sizes and sizes[k] != tuple(v.shape)
    ]
    if pickled:
        raise CheckpointError(
            f"{path} holds pickled objects where tensors belong ({', '.join(pickled[:3])}); "
            "lejepa-ray never unpickles objects. Is it another program's checkpoint?"
        )
    if missing or wrong or extra:
        model_keys = [k for k in missing if k.startswith("model.")]
        which = f"a {saved_model} checkpoint" if saved_model else "this checkpoint"
        here = f" into {model_name}" if model_name and model_name != saved_model else ""
        detail = "; ".join(wrong[:3]) or (
            f"missing {', '.join((model_keys or missing)[:3])}"
            if missing
            else f"not in the model: {', '.join(extra[:3])}"
        )
        raise CheckpointError(
            f"cannot load {which} from {path}{here}: {len(missing)} tensors missing, "
            f"{len(extra)} not in the model and {len(wrong)} of a different shape "
            f"({detail}). The model config (model.name, "
            "model.model_args, projector sizes) must match the checkpoint's config.yaml; to "
            "start afresh use another name= or storage_path=."
        )


def _read_into(ckpt: Opened, target: dict, *, model_name: str | None, saved_model: str) -> None:
    """Check the checkpoint's files and that it holds every tensor of ``target`` with the same
    shape, then load them in place (DCP reshards), verifying every byte range read."""
    metadata = read_metadata(ckpt)
    if ckpt.manifest is None:
        _check_sizes(ckpt, metadata)
    _check_tensors(ckpt.folder, metadata, target, model_name=model_name, saved_model=saved_model)
    try:
        with warnings.catch_warnings():  # DCP warns when it loads in one process: we mean to
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load(
                target, storage_reader=_VerifyingReader(ckpt), no_dist=not dist.is_initialized()
            )
    except CheckpointException as e:  # a BaseException holding each failed rank's exception
        failures = [exc for exc, _ in e.failures.values()]
        ours = [exc for exc in failures if isinstance(exc, CheckpointError)]
        if ours:  # a rank's verifying reader found a corrupt byte range
            raise ours[0] from None
        raise _unreadable(ckpt, failures[0] if failures else e) from None
    except CheckpointError:
        raise
    except Exception as e:
        raise _unreadable(ckpt, e) from None


def _unreadable(ckpt: Opened, error: BaseException) -> CheckpointError:
    return CheckpointError(
        f"reading the shards of {ckpt.folder} failed: a shard file is corrupt "
        f"({type(error).__name__}: {str(error)[:300]}). Use an earlier checkpoint."
    )


def _check_sizes(ckpt: Opened, metadata: Metadata) -> None:
    """For a checkpoint without a manifest: every shard file the index names exists and is
    long enough (catches interrupted writes and truncated copies before DCP fails deep
    inside)."""
    need: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(need.items()):
        have = ckpt.listing.get(name)
        if have is None or have < size:
            state = "is missing" if have is None else f"has {have} of {size} bytes"
            raise CheckpointError(
                f"{ckpt.folder}/{name} {state}: the checkpoint is incomplete or truncated. "
                "Use an earlier checkpoint."
            )


def _flatten(tree: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, tensor) pairs, named as DCP names them in its index."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _rng_name() -> str:
    """This rank's RNG state file, relative to the checkpoint directory."""
    return f"rng/rank_{_rank():05d}.json"


def _rng_state() -> dict:
    def encode(t: torch.Tensor) -> str:
        return base64.b64encode(t.cpu().numpy().tobytes()).decode()

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": encode(torch.get_rng_state()),
        "cuda": [encode(s) for s in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available()
        else [],
        "numpy": [kind, np.asarray(keys).tolist(), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }


def _set_rng_state(saved: dict) -> None:
    def decode(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(decode(saved["torch"]))
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([decode(s) for s in saved["cuda"]])
    kind, keys, pos, has_gauss, gauss = saved["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = saved["python"]
    random.setstate((version, tuple(internal), gauss_next))


def refuse(location: Location, reason: str) -> None:
    """Mark the checkpoint at ``location`` as unusable (``refused.json``), so that
    :func:`latest_checkpoint` passes it over from now on."""
    folder = location if isinstance(location, Folder) else Folder.at(str(location))
    folder.write(REFUSED_FILE, json.dumps({"reason": reason}).encode())
