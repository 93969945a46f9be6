"""The ``folder`` source: a folder of image files, local or a URI, read recursively; labels come
from the first-level subfolders of an ImageNet-style layout.

One piece per image file, so every shuffle reorders single images. A sample's key is its path
below the folder, the same wherever the folder is mounted, and the ``path`` column the
converter (``data.convert``) writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from lejepa_ray.data.keys import in_split
from lejepa_ray.data.plan import Span
from lejepa_ray.data.source import (
    LocalRows,
    Pieces,
    Row,
    Rows,
    Source,
    objects,
    register_source,
    required_path,
)
from lejepa_ray.errors import SourceError
from lejepa_ray.storage import resolve_filesystem

if TYPE_CHECKING:
    from lejepa_ray.data.config import DataConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class FolderListing:
    """The images of a folder, in sorted order, with the labels of an ImageNet-style layout."""

    root: str
    """The folder, as the filesystem names it."""
    files: list[str]
    """Image paths (with the root), sorted."""
    keys: list[str]
    """The same paths below the root: the sample keys, and the converter's ``path`` column."""
    sizes: list[int]
    """File sizes in bytes, per file."""
    mtimes: list[float]
    """Modification times in seconds since the epoch, per file (0 when unknown)."""
    labels: list[int]
    """Class index per file; -1 for files not inside a first-level subfolder."""
    classes: list[str]
    """Sorted names of the first-level subfolders that hold images; empty when none."""
    filesystem: pafs.FileSystem


@register_source("folder")
class FolderSource(Source):
    """A recursive image folder (``data.path``)."""

    needs_path = True
    path_wanted = "image folder"
    path_kind = "an image folder"

    def claims(self, filesystem: pafs.FileSystem, path: str, info: pafs.FileInfo) -> bool:
        """Any existing path: the catch-all, asked last (what it holds is checked when it is
        listed)."""
        return True

    def pieces(self, cfg: DataConfig) -> Pieces:
        listing = list_image_folder(required_path(cfg))
        picks = _folder_picks(listing, cfg)
        reader = FolderReader(
            pa.array([listing.files[i] for i in picks], pa.string()),
            pa.array([listing.keys[i] for i in picks], pa.string()),
            np.array([listing.labels[i] for i in picks], np.int64),
            listing.filesystem,
        )
        return Pieces(np.ones(len(picks), np.int64), reader, listing.classes or None)

    def local(self, cfg: DataConfig) -> LocalRows:
        return FolderRows(list_image_folder(required_path(cfg)), cfg)

    def class_names(self, cfg: DataConfig) -> list[str] | None:
        return list_image_folder(required_path(cfg)).classes or None


@dataclass(frozen=True)
class FolderReader:
    """Image files, one piece each."""

    files: pa.Array
    """Paths, as an Arrow string array: it travels to every task as one buffer, where a list
    of a million Python strings would be unpickled string by string."""
    keys: pa.Array
    labels: np.ndarray
    filesystem: pafs.FileSystem

    def read(self, spans: Sequence[Span]) -> Rows:
        picks = [s.piece for s in spans]
        images = []
        for i in picks:
            with self.filesystem.open_input_file(self.files[i].as_py()) as f:
                images.append(f.read())
        return {
            "image": objects(images),
            "label": self.labels[picks],
            "key": objects([self.keys[i].as_py() for i in picks]),
        }


class FolderRows:
    """The listed images of ``cfg``'s split (at most ``data.num_samples``), read by index."""

    def __init__(self, listing: FolderListing, cfg: DataConfig):
        kept = _folder_picks(listing, cfg)
        self._files = [listing.files[i] for i in kept]
        self._keys = [listing.keys[i] for i in kept]
        self._labels = [listing.labels[i] for i in kept]
        self._fs = listing.filesystem

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, i: int) -> Row:
        if not 0 <= i < len(self._files):
            raise IndexError(i)
        with self._fs.open_input_file(self._files[i]) as f:
            data = f.read()
        return {"image": data, "label": self._labels[i], "key": self._keys[i]}


def list_image_folder(path: str, name: str | None = None) -> FolderListing:
    """List the images under ``path`` recursively; labels come from first-level subfolders.
    ``name``: what the errors call the path (default ``data.path=<path>``).

    Raises:
        SourceError: the path does not exist, is not a folder, or holds no image files.
    """
    fs, root = resolve_filesystem(path)
    info = fs.get_file_info(root)
    named = name or f"data.path={path!r}"
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"{named} does not exist: point it at an image folder.")
    if info.type != pafs.FileType.Directory:
        if name:
            raise SourceError(f"{named} is a file, not a folder: give the folder of images.")
        raise SourceError(
            f"{named} is a file, not a folder: use data.source=parquet for a parquet "
            "file, or point data.path at the folder that holds the images."
        )
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    images = sorted(
        (
            e
            for e in entries
            if e.type == pafs.FileType.File
            and e.base_name.lower().endswith(IMAGE_EXTENSIONS)
            and not e.base_name.startswith(".")
        ),
        key=lambda e: e.path,
    )
    files = [e.path for e in images]
    if not files:
        raise SourceError(
            f"{named} holds no images: expected files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)} in it or its subfolders."
        )
    keys = [relative_path(f, root) for f in files]
    classes = sorted({key.split("/", 1)[0] for key in keys if "/" in key})
    index = {name: i for i, name in enumerate(classes)}
    labels = [folder_label(key, index) for key in keys]
    sizes = [e.size or 0 for e in images]
    mtimes = [e.mtime.timestamp() if e.mtime else 0.0 for e in images]
    return FolderListing(root, files, keys, sizes, mtimes, labels, classes, fs)


def relative_path(path: str, root: str) -> str:
    """``path`` below ``root``: the sample key, the same wherever the folder is mounted and the
    same as the ``path`` column the converter writes."""
    base = root.rstrip("/") + "/"
    at = path.find(base)
    return path[at + len(base) :] if at >= 0 else path


def folder_label(key: str, index: dict[str, int]) -> int:
    """Class of the file ``key`` (a path below the root): its first-level folder, else -1."""
    return index.get(key.split("/", 1)[0], -1) if "/" in key else -1


def _subset(count: int, limit: int | None) -> list[int]:
    """Indices of at most ``limit`` of ``count`` sorted files: a fixed spread over all of them
    (the first N sorted files would be the first classes only), kept in sorted order."""
    if limit is None or limit >= count:
        return list(range(count))
    return sorted(np.random.default_rng(0).permutation(count)[:limit].tolist())


def _folder_picks(listing: FolderListing, cfg: DataConfig) -> list[int]:
    """Indices of the listed files in ``cfg.split``, at most ``cfg.num_samples`` of them."""
    pool = [i for i, key in enumerate(listing.keys) if in_split(key, cfg.split)]
    return [pool[i] for i in _subset(len(pool), cfg.num_samples)]
