"""Sharded, resumable checkpoints with ``torch.distributed.checkpoint`` (DCP).

One checkpoint directory holds (Ray merges every rank's directory into it, so every name a rank
writes is unique to that rank):

- ``__<rank>_0.distcp``: the rank's shards of the model and the optimizer state (every rank);
- ``.metadata``: DCP's index of every shard (rank 0);
- ``rng/rank_<rank>.json``: the rank's RNG states (torch, CUDA, numpy, Python);
- ``state.json``: step, LR schedule, data epoch and position, skipped steps, world size
  (rank 0);
- ``config.yaml``: the run's config (rank 0).

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
import pickle
import random
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata

from lejepa_ray.runtime import quiet_logger

if TYPE_CHECKING:
    from lejepa_ray.train import Trainer

STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"
METADATA_FILE = ".metadata"
FORMAT = 1
"""Version of the layout above; bumped when it changes incompatibly."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used here: missing, incomplete, corrupt, or of another
    model. The message says which file and what to do."""


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
    """Samples of that epoch consumed, over all ranks."""
    scheduler: dict = field(default_factory=dict)
    """The LR scheduler's ``state_dict()``."""
    model: str = ""
    """timm name of the backbone, for error messages."""
    format: int = FORMAT


def save(path: str | Path, trainer: Trainer, state: TrainState, config_yaml: str) -> None:
    """Write this rank's shards and RNG states to ``path``; rank 0 adds ``state.json`` and
    ``config.yaml``. Call on every rank at the same step (DCP's save is collective)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    if dist.is_initialized():
        # Buffers (BatchNorm running statistics) are replicated, not sharded, and drift apart
        # between ranks, which normalize their own batches; DCP would save one arbitrary
        # rank's. Save rank 0's, as DDP broadcasts them before each forward anyway.
        for buffer in trainer.model.buffers():
            if not hasattr(buffer, "to_local"):
                dist.broadcast(buffer, src=0)
    model_state, optim_state = get_state_dict(trainer.model, trainer.optimizer)
    with warnings.catch_warnings():  # DCP warns when it saves in one process: we mean to
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        dcp.save(
            {"model": model_state, "optim": {"state": optim_state["state"]}},
            checkpoint_id=str(path),
            no_dist=not dist.is_initialized(),
        )
    _rng_file(path).parent.mkdir(exist_ok=True)
    _rng_file(path).write_text(json.dumps(_rng_state()))
    if _rank() == 0:
        Path(path, CONFIG_FILE).write_text(config_yaml)
        # Written last: a directory with state.json has all of rank 0's files.
        Path(path, STATE_FILE).write_text(json.dumps(asdict(state), indent=1))


def load(path: str | Path, trainer: Trainer) -> TrainState:
    """Restore model, optimizer, schedule, step and (same world size) RNG states from the
    checkpoint at ``path`` into ``trainer``, resharding to this run's world size and strategy.
    Call on every rank (DCP's load is collective when a process group exists).

    Raises:
        CheckpointError: incomplete or corrupt files, or a checkpoint of another model.
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    state = read_state(path)
    model_state, optim_state = get_state_dict(trainer.model, trainer.optimizer)
    target = {"model": model_state, "optim": {"state": optim_state["state"]}}
    _read_into(path, target, model_name=trainer.cfg.model.name, saved_model=state.model)
    set_state_dict(
        trainer.model,
        trainer.optimizer,
        model_state_dict=model_state,
        optim_state_dict={
            "state": target["optim"]["state"],
            "param_groups": optim_state["param_groups"],
        },
    )
    trainer.scheduler.load_state_dict(state.scheduler)
    for group, lr in zip(
        trainer.optimizer.param_groups, trainer.scheduler.get_last_lr(), strict=True
    ):
        group["lr"] = lr
    trainer.step, trainer.skipped_steps = state.step, state.skipped_steps
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world == state.world_size and _rng_file(path).is_file():
        _set_rng_state(json.loads(_rng_file(path).read_text()))
    return state


def load_model_weights(path: str | Path, model: nn.Module) -> int:
    """Load the encoder weights of the checkpoint at ``path`` into the unsharded ``model`` (in
    this process, no process group); returns the checkpoint's step.

    Raises:
        CheckpointError: incomplete or corrupt files, or a checkpoint of another model.
    """
    state = read_state(path)
    target = {"model": model.state_dict()}
    _read_into(path, target, model_name=None, saved_model=state.model)
    model.load_state_dict(target["model"])
    return state.step


def read_state(path: str | Path) -> TrainState:
    """``state.json`` of the checkpoint at ``path``.

    Raises:
        CheckpointError: no such checkpoint, or its state file is missing or unreadable.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint directory at {path}.")
    file = path / STATE_FILE
    if not file.is_file():
        raise CheckpointError(
            f"{path} has no {STATE_FILE}: it is not a lejepa-ray checkpoint, or it was "
            "interrupted while being written. Use an earlier checkpoint of the run."
        )
    try:
        raw = json.loads(file.read_text())
        state = TrainState(**raw)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{file} is corrupt ({e}); use an earlier checkpoint.") from None
    if state.format != FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {state.format}; this version of "
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
    def find_class(self, module: str, name: str):
        if (module, name) in _METADATA_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def read_metadata(path: str | Path) -> Metadata:
    """DCP's index of the checkpoint at ``path``, unpickled through an allow-list of DCP's own
    classes (DCP itself would ``pickle.load`` it).

    Raises:
        CheckpointError: missing, corrupt, or holding objects other than DCP's index.
    """
    file = Path(path, METADATA_FILE)
    if not file.is_file():
        raise CheckpointError(
            f"{path} has no {METADATA_FILE}: the checkpoint is incomplete "
            "(interrupted while being written). Use an earlier checkpoint."
        )
    try:
        metadata = _MetadataUnpickler(io.BytesIO(file.read_bytes())).load()
    except Exception as e:  # truncated, garbage, or a refused class
        raise CheckpointError(
            f"{file} is corrupt or not a DCP index ({e}); use an earlier checkpoint."
        ) from None
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{file} is not a DCP index (it holds a {type(metadata)}).")
    return metadata


class _SafeReader(FileSystemReader):
    """DCP's file reader with the index read by :func:`read_metadata`; shard files are read
    with ``torch.load(weights_only=True)`` by DCP already."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        metadata = read_metadata(self.path)
        metadata.storage_meta = metadata.storage_meta or StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def check_model(path: str | Path, model: nn.Module, model_name: str | None = None) -> None:
    """Raise CheckpointError unless the checkpoint at ``path`` holds every tensor of ``model``
    (unsharded; the meta device will do) with the same shape. Reads only the index."""
    _check_tensors(
        path,
        read_metadata(path),
        {"model": model.state_dict()},
        model_name=model_name,
        saved_model=read_state(path).model,
    )


def _check_tensors(
    path: str | Path, metadata: Metadata, target: dict, *, model_name: str | None, saved_model: str
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
    wrong = [
        f"{k}: checkpoint {tuple(saved[k].size)}, model {tuple(v.shape)}"
        for k, v in wanted.items()
        if k in saved and k not in pickled and tuple(saved[k].size) != tuple(v.shape)
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


def _read_into(path: str | Path, target: dict, *, model_name: str | None, saved_model: str) -> None:
    """Check the checkpoint's files and that it holds every tensor of ``target`` with the same
    shape, then load them in place (DCP reshards)."""
    metadata = read_metadata(path)
    _check_files(Path(path), metadata)
    _check_tensors(path, metadata, target, model_name=model_name, saved_model=saved_model)
    try:
        with warnings.catch_warnings():  # DCP warns when it loads in one process: we mean to
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load(
                target, storage_reader=_SafeReader(str(path)), no_dist=not dist.is_initialized()
            )
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # DCP's own is a BaseException
        # DCP wraps each rank's traceback in its message; the line naming the error is the one
        # a user needs.
        lines = [line.strip() for line in str(e).splitlines() if "Error" in line]
        cause = (lines[-1] if lines else str(e).strip().splitlines()[-1])[:200]
        raise CheckpointError(
            f"reading the shards of {path} failed: a shard file is corrupt "
            f"({cause}). Use an earlier checkpoint."
        ) from None


def _check_files(path: Path, metadata: Metadata) -> None:
    """Every shard file the index names exists and is long enough (catches interrupted
    writes and truncated copies before DCP fails deep inside)."""
    need: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(need.items()):
        file = path / name
        have = file.stat().st_size if file.is_file() else None
        if have is None or have < size:
            state = "is missing" if have is None else f"has {have} of {size} bytes"
            raise CheckpointError(
                f"{file} {state}: the checkpoint is incomplete or truncated. "
                "Use an earlier checkpoint."
            )


def _flatten(tree: dict, prefix: str = ""):
    """(dotted key, tensor) pairs, named as DCP names them in its index."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _rng_file(path: str | Path) -> Path:
    """This rank's RNG state file in the checkpoint at ``path``."""
    return Path(path, "rng", f"rank_{_rank():05d}.json")


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
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
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


def find(run_or_checkpoint: str | Path) -> Path:
    """The checkpoint directory named by a checkpoint, or the latest complete checkpoint of a
    run directory (as Ray Train registered it).

    Raises:
        CheckpointError: neither a checkpoint nor a run directory with one.
    """
    text = str(run_or_checkpoint)
    if "://" in text and not text.startswith("file://"):
        raise CheckpointError(
            f"{text} is remote; copy the run or checkpoint directory to a "
            "local disk first (e.g. `aws s3 sync URI DIR`)."
        )
    path = Path(text.removeprefix("file://")).expanduser()
    if (path / STATE_FILE).is_file() or (path / METADATA_FILE).is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(
            f"{path} does not exist; pass a run directory (runs/<name>) or a "
            "checkpoint directory (runs/<name>/checkpoint_<step>)."
        )
    latest = latest_checkpoint(str(path))
    if latest is None:
        raise CheckpointError(
            f"{path} holds no completed checkpoint; a run writes one every "
            "checkpoint.every_steps steps and at its end."
        )
    return Path(latest[0].removeprefix("file://"))


def latest_checkpoint(run_dir: str) -> tuple[str, dict] | None:
    """(path, metrics) of the latest checkpoint Ray Train registered for the run directory,
    or None when it has none. Ray registers a checkpoint only once every rank has written it,
    so an interrupted write is never returned."""
    from ray.train import Result

    if "://" not in run_dir:
        run_dir = str(Path(run_dir).expanduser().resolve())  # Ray reads a bare path as a URI
    # Ray logs, on finding the snapshot, advice for starting a new run: not what we do here.
    try:
        with quiet_logger(
            "ray.train.v2._internal.execution.checkpoint.checkpoint_manager", logging.WARNING
        ):
            result = Result.from_path(run_dir)
    except RuntimeError:  # no checkpoint_manager_snapshot.json: the run never checkpointed
        return None
    if result.checkpoint is None:
        return None
    return result.checkpoint.path, dict(result.metrics or {})
