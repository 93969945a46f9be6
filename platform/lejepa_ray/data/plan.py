"""The order of a source's rows in every epoch, cut into units of work, addressed by position.

A source is a list of *pieces* (an image file, a generated id, a parquet row group, or one row
of a row group), each holding ``sizes[i]`` rows. Epoch ``e`` reads every piece once, in an
order drawn from ``(seed, e)``, so its rows form one sequence of ``rows_per_epoch`` rows. That
sequence is cut into *units* of ``unit_rows`` consecutive rows: unit ``k`` of epoch ``e`` is
rows ``[k * unit_rows, (k + 1) * unit_rows)``, the last unit of an epoch possibly shorter.

Units are numbered across epochs (``g = e * units_per_epoch + k``), so one Ray Data execution
can stream many epochs, and a position ``(epoch, samples)`` names a unit and an offset in it:
a resumed run starts reading there, without reading, decoding or cropping what came before.

Nothing here imports Ray: the plan is made on the driver and shipped to the views tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Span:
    """Rows ``[start, stop)`` of piece ``piece``."""

    piece: int
    start: int
    stop: int


@dataclass
class Plan:
    """Every epoch's order of the pieces, and the units cut from it."""

    sizes: np.ndarray
    """int64 (P,): rows in each piece."""
    unit_rows: int
    """Rows per unit (the last unit of an epoch may hold fewer)."""
    seed: int
    """Seed of the per-epoch piece orders."""
    shuffle: bool = True
    """Reorder the pieces every epoch; False keeps their listed order."""
    _orders: dict[int, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.sizes = np.asarray(self.sizes, dtype=np.int64)
        if self.unit_rows < 1:
            raise ValueError(f"unit_rows must be >= 1, got {self.unit_rows}")

    def __getstate__(self) -> dict:  # the per-epoch cache is rebuilt where the plan lands
        return {**self.__dict__, "_orders": {}}

    @property
    def rows_per_epoch(self) -> int:
        return int(self.sizes.sum())

    @property
    def units_per_epoch(self) -> int:
        return math.ceil(self.rows_per_epoch / self.unit_rows)

    def order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch ``epoch``'s pieces in reading order, int64 (P,), and the row each one ends at
        in the epoch's sequence (the cumulative sizes), int64 (P,). The last two are kept."""
        if epoch not in self._orders:
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            pieces = np.arange(len(self.sizes))
            if self.shuffle:
                pieces = np.random.default_rng([self.seed, epoch]).permutation(len(self.sizes))
            self._orders[epoch] = (pieces, np.cumsum(self.sizes[pieces]))
        return self._orders[epoch]

    def unit(self, g: int, skip: int = 0) -> tuple[int, list[Span]]:
        """Unit ``g`` (numbered across epochs): its epoch and its rows as spans of pieces, in
        order, without its first ``skip`` rows."""
        epoch, k = divmod(g, self.units_per_epoch)
        pieces, ends = self.order(epoch)
        lo = k * self.unit_rows + skip
        hi = min((k + 1) * self.unit_rows, self.rows_per_epoch)
        spans = []
        i = int(np.searchsorted(ends, lo, side="right"))  # first piece ending after row lo
        while lo < hi:
            begin = int(ends[i] - self.sizes[pieces[i]])  # the piece's first row in the epoch
            stop = min(int(ends[i]), hi)
            spans.append(Span(int(pieces[i]), lo - begin, stop - begin))
            lo, i = stop, i + 1
        return epoch, spans

    def locate(self, epoch: int, samples: int) -> tuple[int, int]:
        """The unit (numbered across epochs) holding row ``samples`` of epoch ``epoch``, and
        that row's offset in it. ``samples`` at or past the epoch's end is the next epoch's
        start."""
        if samples >= self.rows_per_epoch:
            return (epoch + 1) * self.units_per_epoch, 0
        k, offset = divmod(samples, self.unit_rows)
        return epoch * self.units_per_epoch + k, offset
