"""The data sources as the rest of the package uses them, whatever ``data.source`` names: the
``--data`` argument read into a config, the early check of ``data.path``, the label names and
the rows read in this process. Each function dispatches through the registry
(:mod:`.source`); the sources themselves are ``source_folder``, ``source_parquet`` and
``source_generated``.

Every source yields rows of one schema: ``image`` (encoded bytes), ``label`` (int64, -1 when
unlabelled) and ``key`` (a string naming the sample, stable across runs: it seeds the sample's
crops). :mod:`.readers` reads them by piece for the views tasks (``readers.source_plan``);
:class:`LocalSource` gives the same rows by index, for a DataLoader or a quick look without Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pyarrow.fs as pafs

from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.keys import SPLITS
from lejepa_ray.data.registry import get_source, source_names
from lejepa_ray.data.source import Row
from lejepa_ray.data.source_folder import IMAGE_EXTENSIONS, list_image_folder
from lejepa_ray.data.source_parquet import INCOMPLETE, MANIFEST
from lejepa_ray.errors import SourceError, first_line, option
from lejepa_ray.storage import resolve_filesystem

__all__ = [
    "IMAGE_EXTENSIONS",
    "INCOMPLETE",
    "MANIFEST",
    "LocalSource",
    "SourceError",
    "check_path",
    "class_names",
    "data_from_arg",
    "list_image_folder",
    "source_from_arg",
    "split_suffix",
]


def source_from_arg(value: str) -> tuple[str, str | None]:
    """``(data.source, data.path)`` for a command-line ``--data`` that names a source or a path.

    The name of a source without a path (``synthetic``, ``digits``) names it. An existing path
    goes to the first source that claims it (``Source.claims``), asking the sources registered
    last first: a ``.parquet`` file, or a folder with a converter manifest or parquet files, is
    ``parquet``; any other folder is ``folder``, the catch-all.
    """
    names = source_names()
    pathless = [n for n in names if not get_source(n).needs_path]
    if value in pathless:
        return value, None
    fs, root = resolve_filesystem(value)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.NotFound:
        for name in reversed(names):
            source = get_source(name)
            if source.needs_path and source.claims(fs, root, info):
                return name, value
    raise SourceError(
        f"{option('data')}={value!r} is neither a source ({', '.join(pathless)}) nor an "
        "existing path.",
        field="data",
        value=value,
        expected=f"one of {', '.join(pathless)}, or an existing path",
    )


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
    """Raise SourceError when the ``data.path`` of a source that reads one does not exist: one
    metadata call, made before Ray starts so that a typo costs no cluster start-up. What the
    path holds is checked when the stream lists it."""
    source = get_source(cfg.source)
    if not source.needs_path or cfg.path is None:
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
        raise SourceError(f"data.path={cfg.path!r} does not exist: point it at {source.path_kind}.")


def class_names(cfg: DataConfig) -> list[str] | None:
    """Names of the labels of the configured source, or None when it has no labels."""
    return get_source(cfg.source).class_names(cfg)


class LocalSource(Sequence):
    """The configured source as an indexable sequence of rows, read in this process
    (``Source.local``).

    Row ``i`` is a dict with ``image`` (bytes), ``label`` (int) and ``key`` (str), the same
    rows the views pipeline streams. Parquet shards are loaded into memory, so this is meant
    for DataLoader comparisons and small evaluation sets, not for pretraining at scale.
    """

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self._rows = get_source(cfg.source).local(cfg)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> Row:  # type: ignore[override]  # by index, no slices
        if not 0 <= i < len(self._rows):
            raise IndexError(i)
        return self._rows[i]
