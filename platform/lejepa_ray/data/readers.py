"""Each source's rows, read by piece inside the views tasks, and the plan that orders them.

:func:`source_plan` lists a source once, on the driver, and returns its :class:`~.plan.Plan`
(the pieces and their sizes) with a reader. A reader is small and picklable; a views task calls
``reader.read(spans)`` for the rows of one unit and gets ``image`` (encoded bytes, object),
``label`` (int64, -1 when unlabelled) and ``key`` (str, object) arrays of the same length.

The pieces by source and ``data.shuffle``:

- image folder: one file each, so every shuffle reorders single images;
- parquet: one row group each (``files``, ``none``), so a unit reads one or two row groups
  (the last one read is kept); with ``full``, one row each, at the cost of reading a row group
  per row;
- parquet capped by ``data.num_samples``: one row each of the capped table, which travels with
  the reader;
- synthetic and digits: one generated id each.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.keys import in_split
from lejepa_ray.data.plan import Plan, Span
from lejepa_ray.data.sources import (
    _digits_table,
    _file_limit,
    _folder_picks,
    _generated_classes,
    _generated_ids,
    _parquet_files,
    _parquet_head,
    _parquet_rows,
    list_image_folder,
)
from lejepa_ray.data.synthetic import encode_jpeg, synthetic_image, synthetic_label
from lejepa_ray.errors import SourceError

Rows = dict[str, np.ndarray]
"""``image`` (object: bytes), ``label`` (int64) and ``key`` (object: str), all (N,)."""


class Reader(Protocol):
    """Reads the rows of spans of a source's pieces."""

    def read(self, spans: Sequence[Span]) -> Rows:
        """The rows of ``spans``, in order."""
        ...


@dataclass(frozen=True)
class SourcePlan:
    """A source, listed: its plan, its reader and its label names (None when unlabelled)."""

    plan: Plan
    reader: Reader
    classes: list[str] | None


def source_plan(cfg: DataConfig) -> SourcePlan:
    """List ``cfg``'s source once and plan its epochs in units of ``cfg.transform_batch_size``
    rows, reordered every epoch from ``cfg.seed`` unless ``data.shuffle=none``.

    Raises:
        SourceError: the path is missing, holds no images, or a parquet file has no ``image``.
    """
    shuffle = cfg.shuffle != "none"

    def plan(sizes: np.ndarray) -> Plan:
        if not sizes.sum():
            where = f"data.source={cfg.source}" + (f", data.path={cfg.path!r}" if cfg.path else "")
            raise SourceError(
                f"{where} has no samples in data.split={cfg.split}: point data.path at more "
                "images, or choose another data.split."
            )
        return Plan(sizes, cfg.transform_batch_size, cfg.seed, shuffle)

    if cfg.source == "folder":
        listing = list_image_folder(cfg.path)
        picks = _folder_picks(listing, cfg)
        reader: Reader = FolderReader(
            pa.array([listing.files[i] for i in picks], pa.string()),
            pa.array([listing.keys[i] for i in picks], pa.string()),
            np.array([listing.labels[i] for i in picks], np.int64),
            listing.filesystem,
        )
        return SourcePlan(plan(np.ones(len(picks), np.int64)), reader, listing.classes or None)
    if cfg.source == "parquet":
        shards = _parquet_files(cfg.path, limit=_file_limit(cfg))
        if cfg.num_samples is not None:  # small: the exact first rows, read once, here
            table = _parquet_head(shards, cfg.num_samples, cfg.split)
            return SourcePlan(
                plan(np.ones(table.num_rows, np.int64)), TableReader(table), shards.classes
            )
        reader = ParquetReader.of(shards.files, shards.filesystem, shards.columns, cfg.split)
        sizes = reader.sizes
        if cfg.shuffle == "full":
            reader, sizes = reader.by_row(), np.ones(int(sizes.sum()), np.int64)
        return SourcePlan(plan(sizes), reader, shards.classes)
    ids = _generated_ids(cfg.source, cfg.num_samples, cfg.split)
    return SourcePlan(
        plan(np.ones(len(ids), np.int64)), GeneratedReader(cfg), _generated_classes(cfg)
    )


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
            "image": _objects(images),
            "label": self.labels[picks],
            "key": _objects([self.keys[i].as_py() for i in picks]),
        }


@dataclass(frozen=True)
class TableReader:
    """Rows of an in-memory table of (image, label, key), one piece each."""

    table: pa.Table

    def read(self, spans: Sequence[Span]) -> Rows:
        return _numpy(self.table.take([s.piece for s in spans]))


@dataclass(frozen=True)
class GeneratedReader:
    """Synthetic shapes or scikit-learn digits, one generated id each."""

    cfg: DataConfig

    def read(self, spans: Sequence[Span]) -> Rows:
        cfg = self.cfg
        ids = _generated_ids(cfg.source, cfg.num_samples, cfg.split)[[s.piece for s in spans]]
        if cfg.source == "digits":
            return _numpy(_digits_table(cfg.image_size).take(ids))
        images = [
            encode_jpeg(synthetic_image(int(i), cfg.seed, cfg.image_size, cfg.num_classes))
            for i in ids
        ]
        return {
            "image": _objects(images),
            "label": np.array([synthetic_label(int(i), cfg.num_classes) for i in ids], np.int64),
            "key": _objects([f"synthetic/{i}" for i in ids]),
        }


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
        return _numpy(pa.concat_tables(parts))


def _numpy(rows: pa.Table) -> Rows:
    return {c: rows.column(c).to_numpy(zero_copy_only=False) for c in ("image", "label", "key")}


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
