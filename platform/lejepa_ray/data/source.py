"""The data-source protocol and its registry: what a source of images provides, and the table
of sources by name that ``data.source`` is looked up in.

A source turns a :class:`~lejepa_ray.data.config.DataConfig` into rows of one schema:
``image`` (encoded bytes), ``label`` (int, -1 when unlabelled) and ``key`` (str, stable across
runs and machines: it seeds the sample's crops and places it in ``data.split``). The built-in
sources live one per module (``source_folder``, ``source_parquet``, ``source_generated``); a new
one is a subclass of :class:`Source` (or of :class:`IndexedSource`, for samples made one by
one) decorated with ``@register_source("name")`` (docs/architecture.md, "Adding a source").
Sources are looked up by name in ``data.registry``, which registers the built-ins on import.

Across processes: the driver lists a source (:meth:`Source.pieces`) and ships the reader it
returns to the views tasks, pickled. A ``DataConfig`` pickled to another process (a Ray Train
worker, a probe task) carries the source it names unless it is a built-in (``registry.travelling``,
``registry.adopt``), so a source registered in the driver alone is known wherever the config goes.
Its class travels as cloudpickle sends it: by value when it is defined in the driver's
``__main__`` or in a module passed to ``ray.cloudpickle.register_pickle_by_value``, else by
reference, the other processes importing its module (installed, or shipped with the runtime
environment's ``py_modules``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from lejepa_ray.data.plan import Span
from lejepa_ray.errors import ConfigError

if TYPE_CHECKING:
    from lejepa_ray.data.config import DataConfig

Row = dict[str, Any]
"""One sample: ``image`` (bytes), ``label`` (int, -1 when unlabelled) and ``key`` (str)."""
Rows = dict[str, np.ndarray]
"""Many samples: ``image`` (object: bytes), ``label`` (int64) and ``key`` (object: str), all
(N,)."""

BUILT_IN = ("folder", "parquet", "synthetic", "digits")
"""The sources this package registers, in the order errors list them (the others follow in
the order they were registered). Every process has them; they never travel with a config."""
SOURCES: dict[str, Source] = {}
"""The registered sources by name (``data.source``); read it through :func:`get_source`,
which registers the built-ins first."""


class LocalRows(Protocol):
    """A source's rows read in this process, by index: ``len(rows)`` and ``rows[i]`` for
    0 <= i < len (IndexError past the end), the rows the views pipeline streams, in order."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Row: ...


class Reader(Protocol):
    """Reads the rows of spans of a source's pieces. Small and picklable: the driver makes it,
    each views task reads its units with a copy."""

    def read(self, spans: Sequence[Span]) -> Rows:
        """The rows of ``spans``, in order."""
        ...


@dataclass(frozen=True)
class Pieces:
    """A source, listed once on the driver: what its epochs are planned over."""

    sizes: np.ndarray
    """Rows per piece, int64 (P,), in the source's listed order (a piece: an image file, a
    generated sample, a parquet row group...)."""
    reader: Reader
    """Reads the pieces' rows, in the views tasks."""
    classes: list[str] | None
    """Label names, or None when the source is unlabelled."""


class Source(ABC):
    """Where images come from. One instance per registered name, without state: every method
    takes the ``DataConfig`` that names it. The attributes say what the rest of the package
    may assume of the source, so that no code outside the source modules tests its name."""

    name: ClassVar[str] = ""
    """Its ``data.source`` name (set by :func:`register_source`)."""
    needs_path: ClassVar[bool] = False
    """Whether it reads ``data.path``: a config without one is refused, and :func:`check_path`
    (``data.sources``) looks the path up before Ray starts. Sources without a path are named by
    themselves on the command line (``--data NAME``)."""
    path_wanted: ClassVar[str] = "data it reads"
    """What a missing ``data.path`` should be set to, as the error says it: ``image folder``."""
    path_kind: ClassVar[str] = "the data it reads"
    """What a ``data.path`` that does not exist should point at: ``an image folder``."""
    generated: ClassVar[bool] = False
    """Its samples are made from the config, not read: ``data.num_samples`` bounds its size
    without a listing, so the config's checks (every worker gets a full batch) can use it."""
    num_samples_before_split: ClassVar[bool] = False
    """``data.num_samples`` counts samples before ``data.split`` keeps its share (the source
    makes that many), where other sources keep at most that many of the split."""
    has_true_masks: ClassVar[bool] = False
    """It knows each image's foreground (:meth:`true_masks`), which ``visualize --iou``
    scores attention maps against."""

    def check_config(self, cfg: DataConfig) -> None:
        """Raise ConfigError for a config the source cannot read, from its fields alone (no I/O:
        ``DataConfig`` calls it on construction). By default, a missing ``data.path``."""
        if self.needs_path and not cfg.path:
            raise ConfigError(
                f"data.source={self.name} needs data.path: set data.path to the {self.path_wanted}."
            )

    def claims(self, filesystem: pafs.FileSystem, path: str, info: pafs.FileInfo) -> bool:
        """Whether an existing ``path`` given as ``--data`` holds this source's data (only asked
        of sources that need a path; ``info`` is the path's, from ``filesystem``)."""
        return False

    @abstractmethod
    def pieces(self, cfg: DataConfig) -> Pieces:
        """List the source once (on the driver) as pieces, with a reader of their rows.

        Raises:
            SourceError: the data is missing or unreadable.
        """

    @abstractmethod
    def local(self, cfg: DataConfig) -> LocalRows:
        """The rows of ``cfg``'s split (at most ``data.num_samples``), read in this process by
        index, in the listed order: the rows the views pipeline streams, for probes, RankMe
        and small evaluation sets without Ray."""

    @abstractmethod
    def class_names(self, cfg: DataConfig) -> list[str] | None:
        """The label names, index by index, or None when the source has no labels."""

    def first_rows(self, cfg: DataConfig, count: int) -> LocalRows:
        """Up to ``count`` rows of ``cfg``'s split from its start, for a look at a few images
        (``data preview``). By default, :meth:`local` capped at ``count``."""
        return self.local(replace(cfg, num_samples=min(cfg.num_samples or count, count)))

    def true_masks(self, cfg: DataConfig, keys: Sequence[str]) -> np.ndarray:
        """bool (N, S, S): the foreground of each image named in ``keys``, at the size the
        source renders at. Only for sources with ``has_true_masks``."""
        raise NotImplementedError(f"data.source={self.name} has no true masks")


class IndexedSource(Source):
    """A source of samples numbered 0..n-1, each made or read on its own: one piece per sample.
    A subclass gives :meth:`size`, :meth:`row` and :meth:`class_names`; the reader and the
    local rows come from them."""

    @abstractmethod
    def size(self, cfg: DataConfig) -> int:
        """How many samples ``cfg``'s split holds."""

    @abstractmethod
    def row(self, cfg: DataConfig, i: int) -> Row:
        """Sample ``i`` (0 <= i < size) of ``cfg``'s split."""

    def pieces(self, cfg: DataConfig) -> Pieces:
        size = self.size(cfg)
        return Pieces(np.ones(size, np.int64), IndexedReader(self, cfg), self.class_names(cfg))

    def local(self, cfg: DataConfig) -> LocalRows:
        return IndexedRows(self, cfg)


@dataclass(frozen=True)
class IndexedReader:
    """The reader of an :class:`IndexedSource`: one sample per piece."""

    source: IndexedSource
    cfg: DataConfig

    def read(self, spans: Sequence[Span]) -> Rows:
        rows = [self.source.row(self.cfg, s.piece) for s in spans]
        return {
            "image": objects([r["image"] for r in rows]),
            "label": np.array([r["label"] for r in rows], np.int64),
            "key": objects([r["key"] for r in rows]),
        }


class IndexedRows:
    """The rows of an :class:`IndexedSource`, by index."""

    def __init__(self, source: IndexedSource, cfg: DataConfig):
        self.source, self.cfg, self._len = source, cfg, source.size(cfg)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> Row:
        if not 0 <= i < self._len:
            raise IndexError(i)
        return self.source.row(self.cfg, i)


class TableRows:
    """The rows of an in-memory table of (image, label, key), by index."""

    def __init__(self, table: pa.Table):
        self.table = table

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i: int) -> Row:
        if not 0 <= i < self.table.num_rows:
            raise IndexError(i)
        return {c: self.table.column(c)[i].as_py() for c in ("image", "label", "key")}


def table_rows(rows: pa.Table) -> Rows:
    """A table of (image, label, key) as :data:`Rows`."""
    return {c: rows.column(c).to_numpy(zero_copy_only=False) for c in ("image", "label", "key")}


def objects(values: list) -> np.ndarray:
    """``values`` as a numpy object array (N,), each element kept as it is (bytes, str)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


# --- the registry ---------------------------------------------------------------------------

S = TypeVar("S", bound=Source)


def register_source(name: str) -> Callable[[type[S]], type[S]]:
    """Class decorator: register an instance of the class as ``data.source=name``.

    Registering a name again with a class of the same module and name replaces the entry (a
    module imported twice); with another class, it raises ConfigError."""

    def register(cls: type[S]) -> type[S]:
        if name in BUILT_IN and not cls.__module__.startswith("lejepa_ray.data."):
            raise ConfigError(
                f"data.source={name} is a built-in source's name: give {_qualified(cls)} "
                "another name."
            )
        held = SOURCES.get(name)
        if held is not None and _qualified(type(held)) != _qualified(cls):
            raise ConfigError(
                f"data.source={name} is registered already, by {_qualified(type(held))}: "
                f"give {_qualified(cls)} another name."
            )
        cls.name = name
        SOURCES[name] = cls()
        return cls

    return register


def required_path(cfg: DataConfig) -> str:
    """``data.path`` of a source that needs one (``DataConfig`` refuses such a config without
    one, so it is set)."""
    assert cfg.path is not None
    return cfg.path


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
