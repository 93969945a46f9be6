"""A source's plan: its pieces, listed once on the driver, and each epoch's order of them.

:func:`source_plan` asks the source that ``data.source`` names for its pieces
(``Source.pieces``: their sizes and a reader) and returns its :class:`~.plan.Plan` with the
reader. A reader is small and picklable; a views task calls ``reader.read(spans)`` for the
rows of one unit and gets ``image`` (encoded bytes, object), ``label`` (int64, -1 when
unlabelled) and ``key`` (str, object) arrays of the same length.

What a piece is belongs to each source (an image file, a parquet row group or row, a
generated sample): see the docstrings of ``source_folder``, ``source_parquet`` and
``source_generated``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.plan import Plan
from lejepa_ray.data.registry import get_source
from lejepa_ray.data.source import Reader, Rows
from lejepa_ray.data.source_folder import FolderReader
from lejepa_ray.data.source_parquet import ParquetReader, TableReader
from lejepa_ray.errors import SourceError

__all__ = [
    "FolderReader",
    "ParquetReader",
    "Reader",
    "Rows",
    "SourcePlan",
    "TableReader",
    "source_plan",
]


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
        SourceError: the path is missing, holds no images, a parquet file has no ``image``,
            or the split holds no sample.
    """
    pieces = get_source(cfg.source).pieces(cfg)
    if not pieces.sizes.sum():
        where = f"data.source={cfg.source}" + (f", data.path={cfg.path!r}" if cfg.path else "")
        raise SourceError(
            f"{where} has no samples in data.split={cfg.split}: point data.path at more "
            "images, or choose another data.split."
        )
    plan = Plan(pieces.sizes, cfg.transform_batch_size, cfg.seed, cfg.shuffle != "none")
    return SourcePlan(plan, pieces.reader, pieces.classes)
