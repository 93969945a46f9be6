"""The ``parquet`` source: parquet shards with an ``image`` column of encoded bytes (and any of
``label``, an integer class index, and ``path``, the sample's key), such as ``lejepa-ray data
convert`` writes, local or a URI.

A folder written by the converter is read through its manifest (``dataset.json``); any other
file or folder is every ``*.parquet`` file in it. The pieces, by ``data.shuffle``: one row
group each (``files``, ``none``), so a unit reads one or two row groups (the last one read is
kept); with ``full``, one row each, at the cost of reading a row group per row; capped by
``data.num_samples``, one row each of the capped table, which travels with the reader. Rows
without a ``path`` are keyed by a hash of their bytes.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lejepa_ray.data.keys import in_split
from lejepa_ray.data.plan import Span
from lejepa_ray.data.source import (
    LocalRows,
    Pieces,
    Rows,
    Source,
    TableRows,
    register_source,
    required_path,
    table_rows,
)
from lejepa_ray.errors import SourceError
from lejepa_ray.storage import resolve_filesystem

if TYPE_CHECKING:
    from lejepa_ray.data.config import DataConfig

MANIFEST = "dataset.json"  # written last by the converter: the shards and the class names
INCOMPLETE = "_CONVERTING"  # present while a conversion runs or after one was interrupted
PREVIEW_FILE_ROWS = 8
"""``first_rows`` under a split reads the leading files that hold this many times the rows
asked for, and filters them."""


@register_source("parquet")
class ParquetSource(Source):
    """Parquet shards (``data.path``: a file or a folder)."""

    needs_path = True
    path_wanted = "parquet file or folder"
    path_kind = "parquet shards"

    def claims(self, filesystem: pafs.FileSystem, path: str, info: pafs.FileInfo) -> bool:
        """A file, a folder with a converter manifest, or a folder with ``*.parquet`` files."""
        if info.type == pafs.FileType.File:
            return True
        if filesystem.get_file_info(posixpath.join(path, MANIFEST)).type == pafs.FileType.File:
            return True
        entries = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
        return any(e.path.endswith(".parquet") for e in entries)

    def pieces(self, cfg: DataConfig) -> Pieces:
        shards = _parquet_files(required_path(cfg), limit=_file_limit(cfg))
        if cfg.num_samples is not None:  # small: the exact first rows, read once, here
            table = _parquet_head(shards, cfg.num_samples, cfg.split)
            return Pieces(np.ones(table.num_rows, np.int64), TableReader(table), shards.classes)
        reader = ParquetReader.of(shards.files, shards.filesystem, shards.columns, cfg.split)
        if cfg.shuffle == "full":
            rows = np.ones(int(reader.sizes.sum()), np.int64)
            return Pieces(rows, reader.by_row(), shards.classes)
        return Pieces(reader.sizes, reader, shards.classes)

    def local(self, cfg: DataConfig) -> LocalRows:
        """The rows, loaded into memory: for small evaluation sets, not pretraining at scale."""
        shards = _parquet_files(required_path(cfg), limit=_file_limit(cfg))
        return TableRows(_parquet_head(shards, cfg.num_samples, cfg.split))

    def class_names(self, cfg: DataConfig) -> list[str] | None:
        return _parquet_files(required_path(cfg)).classes

    def first_rows(self, cfg: DataConfig, count: int) -> LocalRows:
        """Under a split, whose rows :meth:`local` reads from every shard, the leading shards
        that hold a few times ``count`` rows, filtered, are enough for a picture."""
        if cfg.split == "all":
            return super().first_rows(cfg, count)
        shards = _parquet_files(required_path(cfg), limit=PREVIEW_FILE_ROWS * count)
        return TableRows(_parquet_head(shards, count, cfg.split))


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


@dataclass(frozen=True)
class TableReader:
    """Rows of an in-memory table of (image, label, key), one piece each."""

    table: pa.Table

    def read(self, spans: Sequence[Span]) -> Rows:
        return table_rows(self.table.take([s.piece for s in spans]))


class ParquetReader:
    """Parquet files, one piece per row group (or per row, see :meth:`by_row`). A piece's rows
    are those of ``data.split`` (all of them by default). The row group read last is kept, so
    consecutive units of one row group read it once."""

    def __init__(
        self,
        files: list[str],
        filesystem: pafs.FileSystem,
        columns: list[str],
        split: str,
        file: np.ndarray,
        group: np.ndarray,
        first: np.ndarray,
        sizes: np.ndarray,
    ):
        self.files, self.filesystem, self.columns, self.split = files, filesystem, columns, split
        self.file, self.group, self.first, self.sizes = file, group, first, sizes
        """Per piece, int64 (P,): file index, row group, first row in the group's rows of the
        split, rows."""
        self._last: tuple[tuple[int, int], pa.Table] | None = None

    @classmethod
    def of(
        cls, files: list[str], filesystem: pafs.FileSystem, columns: list[str], split: str
    ) -> ParquetReader:
        """A reader of every row group of ``files``: one footer read per file, in parallel,
        and under a ``split`` the ``path`` column too, to count each group's rows of the split.
        Shards without a ``path`` are keyed by their content, which only the tasks read: their
        groups count all their rows, and the position of a run falls behind its stream until the
        next pass."""

        def groups(path: str) -> list[int]:
            handle = pq.ParquetFile(path, filesystem=filesystem)
            meta = handle.metadata
            if split == "all" or "path" not in columns:
                return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            return [
                sum(
                    in_split(k, split)
                    for k in handle.read_row_group(g, ["path"])["path"].to_pylist()
                )
                for g in range(meta.num_row_groups)
            ]

        with ThreadPoolExecutor(max_workers=16) as pool:  # object stores answer in parallel
            per_file = list(pool.map(groups, files))
        file = [f for f, sizes in enumerate(per_file) for _ in sizes]
        group = [g for sizes in per_file for g in range(len(sizes))]
        i64 = np.int64
        sizes = np.array([n for s in per_file for n in s], i64)
        return cls(
            files,
            filesystem,
            columns,
            split,
            np.array(file, i64),
            np.array(group, i64),
            np.zeros(len(sizes), i64),
            sizes,
        )

    def by_row(self) -> ParquetReader:
        """The same rows, one piece per row."""
        rows = np.repeat(np.arange(len(self.sizes)), self.sizes)
        first = np.arange(len(rows)) - np.repeat(np.cumsum(self.sizes) - self.sizes, self.sizes)
        return ParquetReader(
            self.files,
            self.filesystem,
            self.columns,
            self.split,
            self.file[rows],
            self.group[rows],
            first,
            np.ones(len(rows), np.int64),
        )

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_last": None}

    def _row_group(self, f: int, g: int) -> pa.Table:
        """Row group ``g`` of file ``f`` as (image, label, key) rows of the split."""
        if self._last is None or self._last[0] != (f, g):
            with self.filesystem.open_input_file(self.files[f]) as handle:
                table = pq.ParquetFile(handle).read_row_group(g, columns=self.columns)
            self._last = ((f, g), _parquet_rows(table, self.split))
        return self._last[1]

    def read(self, spans: Sequence[Span]) -> Rows:
        parts = [
            self._row_group(int(self.file[s.piece]), int(self.group[s.piece])).slice(
                int(self.first[s.piece]) + s.start, s.stop - s.start
            )
            for s in spans
        ]
        return table_rows(pa.concat_tables(parts))


# --- rows and discovery ------------------------------------------------------------------


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
