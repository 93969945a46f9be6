"""Reading a checkpoint's tensors: check that its index holds what the model needs, then load
them with DCP, each byte range fetched alone and verified.

:func:`read_into` is the one way tensors leave a checkpoint, for a resume
(:func:`~lejepa_ray.train.checkpoint.load`: the model and the optimizer, resharded to this
run's world size and strategy) and for the probe and exports
(:func:`~lejepa_ray.train.checkpoint.load_model_weights`: the model alone, in one process).
Before DCP reads anything, :func:`check_tensors` compares the index with the tensors wanted
(every one present, none extra in the model, same shapes), so that a checkpoint of another
model fails with both models' names rather than deep inside DCP. DCP then reads through
:class:`_VerifyingReader`: over pyarrow's filesystems (a local disk or ``s3://``), a rank
fetches only the ranges of the tensors it holds, each checked against the manifest before
``torch.load(weights_only=True)`` parses it.

The checkpoint is an :class:`~lejepa_ray.train.checkpoint_read.Opened`, whose listing, small
files and index (:func:`~lejepa_ray.train.checkpoint_read.read_metadata`) were verified
already; the layout is :mod:`lejepa_ray.train.checkpoint`'s.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from pyarrow import fs as pafs
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystemBase
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata

from lejepa_ray.errors import CheckpointError
from lejepa_ray.storage import Folder
from lejepa_ray.train import manifest as mf
from lejepa_ray.train.checkpoint_read import Opened, corrupt, read_metadata


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
                raise corrupt(self.ckpt.folder, e) from None
        return io.BytesIO(data)


def check_tensors(
    path: str | Path | Folder,
    metadata: Metadata,
    target: dict,
    *,
    model_name: str | None,
    saved_model: str,
) -> None:
    """Raise CheckpointError unless the index ``metadata`` of the checkpoint at ``path`` holds
    every tensor of ``target`` (nested ``{"model": {name: tensor}, ...}``) with its shape, and
    no model tensor ``target`` lacks. ``model_name`` (the config's) and ``saved_model`` (the
    checkpoint's) name the two models in the error."""
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


def read_into(ckpt: Opened, target: dict, *, model_name: str | None, saved_model: str) -> None:
    """Check the checkpoint's files and that it holds every tensor of ``target`` with the same
    shape, then load them in place (DCP reshards), verifying every byte range read."""
    metadata = read_metadata(ckpt)
    if ckpt.manifest is None:
        _check_sizes(ckpt, metadata)
    check_tensors(ckpt.folder, metadata, target, model_name=model_name, saved_model=saved_model)
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
