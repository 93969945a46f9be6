"""A checkpoint opened where it lies, its files read verified: the manifest, the refusal
marker, and DCP's index through an allow-list.

:class:`Opened` lists a checkpoint directory once (a local disk or object storage, through
:class:`~lejepa_ray.storage.Folder`), checks the listing against ``manifest.json``
(:mod:`lejepa_ray.train.manifest`: every file there with its size) and reads each small file
(``state.json``, ``config.yaml``, the RNG states, ``.metadata``) once, against its checksum. A
checkpoint that failed verification while a run loaded it carries ``refused.json``
(:func:`refuse`), and opening it fails from then on. :func:`read_metadata` unpickles DCP's
index, the one pickle in a checkpoint, through an allow-list of DCP's own classes.

The layout and the save and load entry points are :mod:`lejepa_ray.train.checkpoint`; the
tensors themselves are read by :mod:`lejepa_ray.train.checkpoint_shards`, through an
:class:`Opened`. ``lejepa_ray.runs`` opens each registered checkpoint with it to pick the
latest complete one.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata

from lejepa_ray.errors import CheckpointError
from lejepa_ray.storage import Folder
from lejepa_ray.train import manifest as mf

log = logging.getLogger(__name__)

Location = str | Path | Folder
"""A checkpoint directory: a local path, a URI (``s3://bucket/runs/r/checkpoint_00000008``) or
a :class:`~lejepa_ray.storage.Folder`."""

METADATA_FILE = ".metadata"
REFUSED_FILE = "refused.json"
"""Written into a checkpoint that failed verification while a run loaded it, so that the
restarted attempt, and every later resume, pass it over."""


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
            raise corrupt(self.folder, e) from None

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
                raise corrupt(self.folder, e) from None
        self._verified[name] = data
        return data

    def has(self, name: str) -> bool:
        return name in self.listing


def corrupt(folder: Folder, error: Exception) -> CheckpointError:
    """The error for a file or byte range of ``folder`` that does not match its manifest."""
    return CheckpointError(
        f"checkpoint {folder} is corrupt: {error}. Use an earlier checkpoint of the run."
    )


def refuse(location: Location, reason: str) -> None:
    """Mark the checkpoint at ``location`` as unusable (``refused.json``), so that
    :func:`latest_checkpoint` passes it over from now on."""
    folder = location if isinstance(location, Folder) else Folder.at(str(location))
    folder.write(REFUSED_FILE, json.dumps({"reason": reason}).encode())


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
