"""Where images come from: image folders, parquet shards, synthetic shapes, scikit-learn digits.

Every source yields rows of one schema: ``image`` (encoded bytes), ``label`` (int64, -1 when
unlabelled) and ``key`` (a string naming the sample, stable across runs: it seeds the sample's
crops). :mod:`.readers` reads them by piece for the views tasks (``readers.source_plan``);
:class:`LocalSource` gives the same rows by index, for a DataLoader or a quick look without Ray.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.keys import SPLITS, in_split
from lejepa_ray.data.synthetic import encode_jpeg, synthetic_image, synthetic_label
from lejepa_ray.errors import SourceError, first_line
from lejepa_ray.storage import resolve_filesystem

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MANIFEST = "dataset.json"  # written last by the converter: the shards and the class names
INCOMPLETE = "_CONVERTING"  # present while a conversion runs or after one was interrupted
DEFAULT_SYNTHETIC_SAMPLES = 10_000
DIGITS_CLASSES = [str(d) for d in range(10)]
DIGITS_COUNT = 1797


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


@dataclass(frozen=True)
class ParquetListing:
    """The parquet files of a source, checked, with what their first footer said."""

    files: list[str]
    """Files to read, in order."""
    classes: list[str] | None
    """Label names stored with the data (manifest or schema metadata), or None."""
    columns: list[str]
    """The columns we read that the files have: ``image`` and any of ``label``, ``path``."""
    filesystem: pafs.FileSystem


def source_from_arg(value: str) -> tuple[str, str | None]:
    """``(data.source, data.path)`` for a command-line ``--data`` that names a source or a path.

    ``synthetic`` and ``digits`` name generated sources; a ``.parquet`` file, or a folder with
    a converter manifest or parquet files, is ``parquet``; any other folder is ``folder``.
    """
    if value in ("synthetic", "digits"):
        return value, None
    fs, root = resolve_filesystem(value)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise SourceError(
            f"--data {value!r} is neither a source (synthetic, digits) nor an existing path."
        )
    if info.type == pafs.FileType.File:
        return "parquet", value
    if fs.get_file_info(posixpath.join(root, MANIFEST)).type == pafs.FileType.File:
        return "parquet", value
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    if any(e.path.endswith(".parquet") for e in entries):
        return "parquet", value
    return "folder", value


def split_suffix(value: str) -> tuple[str, str | None]:
    """``("digits", "val")`` for ``digits:val``: a ``--data`` argument without its ``:train``,
    ``:val`` or ``:all`` suffix, and the split it names (None: no suffix)."""
    head, sep, tail = value.rpartition(":")
    if sep and tail in SPLITS and head:
        return head, tail
    return value, None


def data_from_arg(value: str, image_size: int | None = None) -> DataConfig:
    """The ``DataConfig`` of a command-line ``--data``: what :func:`source_from_arg` accepts,
    optionally followed by ``:train``, ``:val`` or ``:all`` to pick a ``data.split``
    (``digits:val``; ``/data/imgs:train``). ``image_size``: the size generated sources (no
    path) render at, that of the model they are probed with; files keep their own."""
    value, split = split_suffix(value)
    source, path = source_from_arg(value)
    cfg = DataConfig(source=source, path=path, split=split or "all")
    return replace(cfg, image_size=image_size) if image_size and path is None else cfg


def check_path(cfg: DataConfig) -> None:
    """Raise SourceError when a folder or parquet source's ``data.path`` does not exist: one
    metadata call, made before Ray starts so that a typo costs no cluster start-up. What the
    path holds is checked when the stream lists it."""
    if cfg.source not in ("folder", "parquet") or cfg.path is None:
        return
    try:
        filesystem, where = resolve_filesystem(cfg.path)  # s3://: asks for the bucket's region
        info = filesystem.get_file_info(where)
    except OSError as e:  # an unknown host, missing credentials, a denied bucket
        raise SourceError(
            f"data.path={cfg.path!r} cannot be read: {first_line(e)}. Check the URI, the network "
            "and the credentials (for s3://, the AWS_* variables or the instance's role)."
        ) from None
    if info.type == pafs.FileType.NotFound:
        what = "an image folder" if cfg.source == "folder" else "parquet shards"
        raise SourceError(f"data.path={cfg.path!r} does not exist: point it at {what}.")


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


def class_names(cfg: DataConfig) -> list[str] | None:
    """Names of the labels of the configured source, or None when it has no labels."""
    if cfg.source == "folder":
        return list_image_folder(cfg.path).classes or None
    if cfg.source == "parquet":
        return _parquet_files(cfg.path).classes
    return _generated_classes(cfg)


def _generated_classes(cfg: DataConfig) -> list[str]:
    if cfg.source == "digits":
        return list(DIGITS_CLASSES)
    return [f"class_{c}" for c in range(cfg.num_classes)]


class LocalSource(Sequence):
    """The configured source as an indexable sequence of rows, read in this process.

    Row ``i`` is a dict with ``image`` (bytes), ``label`` (int) and ``key`` (str), the same
    rows the views pipeline streams. Parquet shards are loaded into memory, so this is meant
    for DataLoader comparisons and small evaluation sets, not for pretraining at scale.
    """

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        if cfg.source == "folder":
            listing = list_image_folder(cfg.path)
            kept = _folder_picks(listing, cfg)
            self._files = [listing.files[i] for i in kept]
            self._keys = [listing.keys[i] for i in kept]
            self._labels = [listing.labels[i] for i in kept]
            self._fs = listing.filesystem
            self._len = len(self._files)
        elif cfg.source == "parquet":
            self._table = _parquet_head(
                _parquet_files(cfg.path, limit=_file_limit(cfg)), cfg.num_samples, cfg.split
            )
            self._len = self._table.num_rows
        else:
            self._ids = _generated_ids(cfg.source, cfg.num_samples, cfg.split)
            if cfg.source == "digits":
                self._table = _digits_table(cfg.image_size).take(self._ids)
            self._len = len(self._ids)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self._len:
            raise IndexError(i)
        cfg = self.cfg
        if cfg.source == "folder":
            with self._fs.open_input_file(self._files[i]) as f:
                data = f.read()
            return {"image": data, "label": self._labels[i], "key": self._keys[i]}
        if cfg.source == "synthetic":
            i = int(self._ids[i])
            img = synthetic_image(i, cfg.seed, cfg.image_size, cfg.num_classes)
            return {
                "image": encode_jpeg(img),
                "label": synthetic_label(i, cfg.num_classes),
                "key": f"synthetic/{i}",
            }
        return {c: self._table.column(c)[i].as_py() for c in ("image", "label", "key")}


# --- row builders: each source's native columns to (image, label, key) -----------------------


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


def _file_limit(cfg: DataConfig) -> int | None:
    """How many rows the leading parquet files must hold: ``num_samples`` of the whole source;
    under a split, every file (the split's rows are spread over all of them)."""
    return cfg.num_samples if cfg.split == "all" else None


def _parquet_rows(batch: pa.Table, split: str = "all") -> pa.Table:
    images = batch.column("image").cast(pa.binary())
    n = batch.num_rows
    if "label" in batch.column_names:
        labels = batch.column("label").cast(pa.int64()).fill_null(-1)
    else:
        labels = pa.array(np.full(n, -1, np.int64))
    if "path" in batch.column_names:
        keys = batch.column("path").cast(pa.string()).to_pylist()
    else:
        keys = [None] * n
    # Without a path, the content names the sample: stable wherever the row is read.
    keys = [
        k if k is not None else _content_key(b)
        for k, b in zip(keys, images.to_pylist(), strict=True)
    ]
    rows = pa.table({"image": images, "label": labels, "key": pa.array(keys, pa.string())})
    if split == "all":
        return rows
    return rows.filter(pa.array([in_split(k, split) for k in keys], pa.bool_()))


def _content_key(data: bytes | None) -> str:
    return "sha:" + hashlib.blake2b(data or b"", digest_size=12).hexdigest()


@functools.lru_cache(maxsize=8)
def _generated_ids(source: str, num_samples: int | None, split: str) -> np.ndarray:
    """Ids (int64) of the synthetic or digits samples in ``split``. Synthetic generates
    ``num_samples`` ids, then splits them; digits splits its 1,797, then keeps ``num_samples``."""
    total = (num_samples or DEFAULT_SYNTHETIC_SAMPLES) if source == "synthetic" else DIGITS_COUNT
    ids = np.array([i for i in range(total) if in_split(f"{source}/{i}", split)], np.int64)
    return ids if source == "synthetic" else ids[:num_samples]


@functools.lru_cache(maxsize=4)
def _digits_table(size: int) -> pa.Table:
    """scikit-learn's 1,797 bundled 8×8 digits, upsampled to ``size`` px, as PNG rows."""
    # lazy: scikit-learn takes about a second to import; only the digits source needs it.
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Intensities are 0..16 ink on white paper; invert so digits look like ink on paper.
    pixels = (255 - np.clip(digits.images * 16, 0, 255)).astype(np.uint8)
    images = []
    for p in pixels:
        buffer = io.BytesIO()
        Image.fromarray(p, mode="L").resize((size, size), Image.Resampling.BICUBIC).save(
            buffer, format="PNG"
        )
        images.append(buffer.getvalue())
    return pa.table(
        {
            "image": pa.array(images, pa.binary()),
            "label": pa.array(digits.target.astype(np.int64)),
            "key": pa.array([f"digits/{i}" for i in range(len(images))], pa.string()),
        }
    )


# --- parquet discovery ---------------------------------------------------------------------


def _parquet_files(path: str, limit: int | None = None) -> ParquetListing:
    """The parquet files to read under ``path``, their columns and the class names stored
    with them; the first file's footer is read once, here, and its schema checked.

    A folder written by ``lejepa-ray data convert`` is read through its manifest, so shards of
    an unfinished conversion or a stale run are never read. Otherwise every ``*.parquet`` file.
    With ``limit``, only as many leading files as hold that many rows.
    """
    fs, root = resolve_filesystem(path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"data.path={path!r} does not exist: point it at parquet shards.")
    classes = None
    if info.type == pafs.FileType.File:
        files = [root]
    elif fs.get_file_info(posixpath.join(root, INCOMPLETE)).type == pafs.FileType.File:
        raise SourceError(
            f"data.path={path!r} holds an unfinished conversion ({INCOMPLETE} is present): "
            "rerun the same `lejepa-ray data convert` command to complete it."
        )
    else:
        manifest = posixpath.join(root, MANIFEST)
        if fs.get_file_info(manifest).type == pafs.FileType.File:
            with fs.open_input_stream(manifest) as f:
                meta = json.loads(f.read())
            files = [posixpath.join(root, s["file"]) for s in meta["shards"]]
            classes = meta.get("classes") or None
        else:
            files = sorted(
                e.path
                for e in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                if e.type == pafs.FileType.File
                and e.path.endswith(".parquet")
                and not e.base_name.startswith((".", "_"))
            )
    if not files:
        raise SourceError(
            f"data.path={path!r} holds no parquet files: expected *.parquet shards with an "
            "'image' column (make them with `lejepa-ray data convert IMAGE_FOLDER OUT`)."
        )
    schema = _schema(fs, files[0])
    if "image" not in schema.names:
        raise SourceError(
            f"{files[0]} has no 'image' column (columns: {', '.join(schema.names)}): parquet "
            "sources need the encoded image bytes in a column named 'image'."
        )
    expected = {
        "image": (pa.types.is_binary, pa.types.is_large_binary, "binary (encoded bytes)"),
        "label": (pa.types.is_integer, pa.types.is_integer, "an integer class index"),
        "path": (pa.types.is_string, pa.types.is_large_string, "a string"),
    }
    for name, (check, check_large, what) in expected.items():
        if name in schema.names:
            kind = schema.field(name).type
            if not (check(kind) or check_large(kind)):
                raise SourceError(
                    f"{files[0]}: column {name!r} has type {kind}, expected {what}. Rewrite the "
                    "shards (e.g. with `lejepa-ray data convert`) or rename the column."
                )
    if classes is None and schema.metadata and b"lejepa_ray.classes" in schema.metadata:
        classes = json.loads(schema.metadata[b"lejepa_ray.classes"]) or None
    if limit is not None:
        kept, rows = [], 0
        for f in files:
            if rows >= limit:
                break
            kept.append(f)
            rows += pq.read_metadata(f, filesystem=fs).num_rows
        files = kept
    columns = [c for c in ("image", "label", "path") if c in schema.names]
    return ParquetListing(files, classes, columns, fs)


def _parquet_head(shards: ParquetListing, limit: int | None, split: str = "all") -> pa.Table:
    """The first ``limit`` rows (all when None) of ``split`` in the shards, in order, as
    (image, label, key)."""
    tables = [
        pq.read_table(f, filesystem=shards.filesystem, columns=shards.columns) for f in shards.files
    ]
    # "permissive": shards written apart may differ in width (int32/int64, binary/large_binary).
    table = pa.concat_tables(tables, promote_options="permissive")
    if split == "all" and limit is not None:
        table = table.slice(0, limit)  # keys (content hashes) only for the rows returned
    rows = _parquet_rows(table, split)
    return rows.slice(0, limit) if limit is not None else rows


def _schema(fs: pafs.FileSystem, file: str) -> pa.Schema:
    try:
        return pq.read_schema(file, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(f"{file} is not a readable parquet file: {e}") from None
