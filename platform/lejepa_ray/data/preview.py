"""``lejepa-ray data preview``: a picture of the views the training pipeline makes.

A few samples of a source are read in this process (:class:`~.sources.LocalSource`, the probes'
reading; no Ray), and their views are made by the pipeline's own code: the data task's
:meth:`.views.ViewMaker.batch` (what ``stream.unit_views`` calls), seeded by (``data.seed``,
epoch, key) as in training, then, with ``data.augment_on=device``, the trainer's device step
(:func:`.kernel_sets.device_augment`: ``device_views.augment_batch``), on this machine's CPU.
Nothing is re-implemented, so the picture is what the model is fed, pixel for pixel (on a GPU
the device ops may round a level differently).

The views are never normalized before the model (the encoder divides by the backbone's mean
and std itself): they are already RGB on the 0-255 scale, uint8 from the CPU path, float32 from
the device path, which is rounded and clamped to uint8 here for display only.

The grid: one row per sample, the decoded image (scaled to fit its cell), then its ``V_g``
global views, then its ``V_l`` local views, each at its own size times an integer ``zoom``
(nearest neighbour, so every pixel of a view is a ``zoom × zoom`` block of the picture).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from lejepa_ray import storage
from lejepa_ray.data.config import AUGMENT_ON, DataConfig
from lejepa_ray.data.decode import BadImage, decode_rgb
from lejepa_ray.data.kernel_sets import device_augment
from lejepa_ray.data.registry import get_source
from lejepa_ray.data.source import LocalRows
from lejepa_ray.data.sources import data_from_arg, split_suffix
from lejepa_ray.data.views import ViewMaker
from lejepa_ray.errors import SourceError, check_field, option

MIN_GLOBAL_PX = 128
"""The automatic zoom draws a global view at least this many pixels wide."""
PAD = 4
"""Pixels between cells and around the grid."""
HEADER = 16
"""Height in pixels of the column titles above the grid (0 without titles)."""
BACKGROUND = (64, 64, 64)
"""Mid-dark grey: white paper (digits) and black borders both stand out against it."""
EXTRA_ROWS = 16
"""Rows read beyond ``samples``, so that a few undecodable images do not leave the grid short."""


@dataclass
class PreviewOptions:
    """Draw a few samples' views exactly as the training pipeline makes them, to a PNG: one row
    per sample, the image, then its global views, then its local views. The images are read in
    this process (no Ray). The views come from the pretrain config's data section (--config,
    default the quickstart, and the --data.* flags); its other sections are accepted, so that a
    run's config file can be given as it is, and ignored."""

    src: str
    """The images: ``digits``, ``synthetic``, an image folder or parquet shards, local or a
    URI, optionally with ``:train``, ``:val`` or ``:all`` to pick the split (otherwise the
    config's ``data.split``)."""
    out: str = "views.png"
    """Where to write the PNG (a local path or a URI)."""
    samples: int = 4
    """How many samples (rows); the first decodable ones of the source's split."""
    seed: int | None = None
    """Seed of the crops. None: ``data.seed``, the run's own, so these are the views it trains
    on."""
    epoch: int = 0
    """The epoch whose views to draw: every epoch draws new crops of each sample."""
    augment_on: str | None = None
    """Where the photometric ops run (``data.augment_on``): ``cpu`` (in the data tasks) or
    ``device`` (batched on the training device; here, on this CPU). None: the config's."""
    zoom: int | None = None
    """Each view pixel drawn as zoom × zoom pixels. None: the smallest zoom that draws a global
    view at least 128 px wide."""


@dataclass
class SampleViews:
    """One sample and its views, as the pipeline made them."""

    key: str
    """The sample's key (it seeds the crops)."""
    label: int
    """Its class (-1: unlabelled)."""
    image: np.ndarray
    """The decoded image, uint8 (H, W, 3)."""
    global_views: np.ndarray
    """uint8 (V_g, 3, S_g, S_g): RGB on the 0-255 scale, as the model receives it (device
    views rounded to the nearest level)."""
    local_views: np.ndarray
    """uint8 (V_l, 3, S_l, S_l), as ``global_views``."""


@dataclass(frozen=True)
class GridLayout:
    """Where everything is in the picture, in pixels. Columns: the image, in a square of the row
    height, then V_g global views and V_l local views, each column as wide as its view."""

    rows: int
    """Samples."""
    zoom: int
    """Picture pixels per view pixel, along each side."""
    header: int
    """Height of the column titles."""
    global_views: int
    global_size: int
    local_views: int
    local_size: int

    @property
    def columns(self) -> int:
        """1 (the image) + V_g + V_l."""
        return 1 + self.global_views + self.local_views

    @property
    def row_height(self) -> int:
        """zoom × the larger view side: the largest view fills its row."""
        return self.zoom * max(self.global_size, self.local_size if self.local_views else 0)

    def column_width(self, column: int) -> int:
        """Width of column ``column`` (0: the image, then the global and local views)."""
        if column == 0:
            return self.row_height
        if column <= self.global_views:
            return self.zoom * self.global_size
        return self.zoom * self.local_size

    @property
    def width(self) -> int:
        return PAD + sum(self.column_width(c) + PAD for c in range(self.columns))

    @property
    def height(self) -> int:
        return self.header + PAD + self.rows * (self.row_height + PAD)

    def cell_origin(self, row: int, column: int) -> tuple[int, int]:
        """(left, top) of cell (``row``, ``column``)."""
        left = PAD + sum(self.column_width(c) + PAD for c in range(column))
        return left, self.header + PAD + row * (self.row_height + PAD)

    def view_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the view drawn in cell (``row``, ``column``): columns
        1..V_g the global views, then the local ones, each centred on its row's height."""
        if not 1 <= column < self.columns:
            raise IndexError(f"column {column}: views are in columns 1..{self.columns - 1}")
        size = self.column_width(column)
        left, top = self.cell_origin(row, column)
        top += (self.row_height - size) // 2
        return left, top, left + size, top + size

    def titles(self) -> list[str]:
        """The column titles: ``image``, ``global 1``.., ``local 1``.. (``g1``, ``l1`` where
        a column is too narrow for the words)."""
        long = self.zoom * min(self.global_size, self.local_size) >= 48
        g, loc = ("global ", "local ") if long else ("g", "l")
        return (
            ["image"]
            + [f"{g}{i + 1}" for i in range(self.global_views)]
            + [f"{loc}{i + 1}" for i in range(self.local_views)]
        )


@dataclass
class PreviewResult:
    """What :func:`preview` drew."""

    out: str
    """The PNG written."""
    data: DataConfig
    """The data config the views were made with (seed and ``augment_on`` applied)."""
    keys: list[str]
    """The samples' keys, a row each."""
    layout: GridLayout
    epoch: int

    def describe(self) -> str:
        """One line for the command line."""
        d, lay = self.data, self.layout
        split = "" if d.split == "all" else f" (split {d.split})"
        return (
            f"wrote {self.out} ({lay.width}×{lay.height} px): {lay.rows} samples of "
            f"{d.path or d.source}{split}, each the image, {lay.global_views} global "
            f"({lay.global_size} px) and {lay.local_views} local ({lay.local_size} px) views, "
            f"drawn ×{lay.zoom}; augment_on={d.augment_on}, data.seed={d.seed}, epoch "
            f"{self.epoch}"
        )


def preview_data(options: PreviewOptions, data: DataConfig | None = None) -> DataConfig:
    """The data config the preview makes views with: ``data`` (None: the defaults) with the
    source, split, seed and ``augment_on`` of ``options`` on top.

    Raises:
        SourceError: ``src`` names no source or existing path.
        ConfigError: an invalid option.
    """
    base = data if data is not None else DataConfig()
    check_field(options.samples >= 1, "samples", options.samples, "an integer >= 1")
    check_field(options.epoch >= 0, "epoch", options.epoch, "an integer >= 0")
    check_field(options.zoom is None or options.zoom >= 1, "zoom", options.zoom, "None or >= 1")
    check_field(
        options.augment_on is None or options.augment_on in AUGMENT_ON,
        "augment_on",
        options.augment_on,
        f"None or one of {', '.join(AUGMENT_ON)}",
    )
    try:
        given = data_from_arg(options.src)
    except SourceError as e:  # said of `data`, the name other commands give the argument
        moved = e.said_of("src")
        raise SourceError(
            f"{moved.args[0]} Give digits, synthetic, an image folder or parquet shards.",
            field=moved.field,
            value=moved.value,
            expected=moved.expected,
        ) from None
    # Without a :split suffix the config's split stays, as for pretrain's data= argument.
    split = split_suffix(options.src)[1] or base.split
    changes: dict[str, Any] = {"source": given.source, "path": given.path, "split": split}
    if options.seed is not None:
        changes["seed"] = options.seed
    if options.augment_on is not None:
        changes["augment_on"] = options.augment_on
    return dataclasses.replace(base, **changes)


def sample_views(data: DataConfig, samples: int = 4, epoch: int = 0) -> list[SampleViews]:
    """The views of the first ``samples`` decodable samples of ``data``'s source (its split),
    made by the pipeline's code for ``epoch`` (see the module docstring).

    Raises:
        SourceError: the source cannot be read, or none of its first images decodes.
    """
    source = _first_rows(data, samples + EXTRA_ROWS)
    rows, images = [], []
    for i in range(len(source)):
        row = source[i]
        try:
            images.append(decode_rgb(row["image"], data.max_pixels))
        except BadImage:
            continue
        rows.append(row)
        if len(rows) == samples:
            break
    if not rows:
        where = f"data.source={data.source}" + (f", data.path={data.path!r}" if data.path else "")
        raise SourceError(
            f"{where}: none of the first {len(source)} images of data.split={data.split} "
            "decodes: check the files, or choose another split."
        )
    maker = ViewMaker.of(data)
    made = maker.batch([r["image"] for r in rows], [r["key"] for r in rows], epoch)
    glob, loc = made.global_views, made.local_views
    augment = device_augment(data)
    if augment is not None:  # data.augment_on=device: the trainer's step, here
        assert made.global_params is not None
        batch = {
            "global": torch.from_numpy(glob),
            "global_params": torch.from_numpy(made.global_params),
        }
        if data.views.local_views:
            assert made.local_params is not None
            batch["local"] = torch.from_numpy(loc)
            batch["local_params"] = torch.from_numpy(made.local_params)
        done = augment(batch)
        glob = to_uint8(done["global"])
        loc = to_uint8(done["local"]) if "local" in done else loc
    return [
        SampleViews(
            key=str(rows[k]["key"]),
            label=-1 if rows[k]["label"] is None else int(rows[k]["label"]),
            image=np.asarray(images[k]),
            global_views=glob[j],
            local_views=loc[j],
        )
        for j, k in enumerate(made.kept.tolist())
    ]


def _first_rows(data: DataConfig, pool: int) -> LocalRows:
    """Up to ``pool`` rows (image, label, key) of ``data``'s split, from its start, with the
    keys the pipeline gives them (``Source.first_rows``)."""
    return get_source(data.source).first_rows(data, pool)


def to_uint8(views: torch.Tensor) -> np.ndarray:
    """Views on the 0-255 scale (any shape, float or uint8) as uint8 numpy: rounded to the
    nearest level and clamped, as an image viewer needs them."""
    return views.round().clamp_(0, 255).to(torch.uint8).numpy()


def auto_zoom(global_size: int, local_size: int) -> int:
    """The smallest integer zoom at which the larger view kind is drawn at least 128 px wide."""
    return max(1, math.ceil(MIN_GLOBAL_PX / max(global_size, local_size)))


def layout_of(
    rows: int, data: DataConfig, zoom: int | None = None, titles: bool = True
) -> GridLayout:
    """The grid of ``rows`` samples of ``data``'s views (``zoom`` None: :func:`auto_zoom`)."""
    v = data.views
    return GridLayout(
        rows=rows,
        zoom=zoom or auto_zoom(v.global_size, v.local_size),
        header=HEADER if titles else 0,
        global_views=v.global_views,
        global_size=v.global_size,
        local_views=v.local_views,
        local_size=v.local_size,
    )


def draw_grid(samples: Sequence[SampleViews], layout: GridLayout) -> np.ndarray:
    """The picture of ``samples`` laid out by ``layout``: uint8 (layout.height, layout.width,
    3). Views are drawn at their size × ``layout.zoom`` (nearest neighbour), so
    ``picture[box][::zoom, ::zoom]`` is the view itself (:meth:`GridLayout.view_box`)."""
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    if layout.header:
        draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
        for c, title in enumerate(layout.titles()):
            left, _ = layout.cell_origin(0, c)
            draw.text((left, 2), title, fill=(255, 255, 255), font=font)
    for r, s in enumerate(samples):
        fitted = _fit(s.image, layout.row_height)
        left, top = layout.cell_origin(r, 0)
        side = layout.row_height
        canvas.paste(fitted, (left + (side - fitted.width) // 2, top + (side - fitted.height) // 2))
        views = [*s.global_views, *s.local_views]
        for c, view in enumerate(views, start=1):
            tile = np.asarray(view).transpose(1, 2, 0)  # (3, S, S) -> (S, S, 3)
            tile = tile.repeat(layout.zoom, 0).repeat(layout.zoom, 1)
            left, top, _, _ = layout.view_box(r, c)
            canvas.paste(Image.fromarray(np.ascontiguousarray(tile)), (left, top))
    return np.asarray(canvas)


def _fit(image: np.ndarray, cell: int) -> Image.Image:
    """``image`` (H, W, 3) scaled to fit a ``cell``-pixel square, its aspect kept: nearest
    neighbour when enlarged (its real pixels, as the views are drawn), Lanczos when reduced."""
    h, w = image.shape[:2]
    scale = cell / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    kind = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    return Image.fromarray(image).resize(size, kind)


def png_bytes(picture: np.ndarray) -> bytes:
    """``picture`` uint8 (H, W, 3) encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def preview(options: PreviewOptions, data: DataConfig | None = None) -> PreviewResult:
    """Write the PNG of ``options.samples`` samples' views (``data``: the run's data config,
    None: the defaults; ``options`` override its source, seed and ``augment_on``).

    Raises:
        SourceError, ConfigError: a bad SRC or option, or an output that cannot be written
            (checked before any image is read).
    """
    cfg = preview_data(options, data)
    if storage.is_local(options.out):
        folder = os.path.dirname(os.path.abspath(options.out.removeprefix("file://")))
        storage.check_output(folder, f"{option('out')} folder")
    made = sample_views(cfg, options.samples, options.epoch)
    layout = layout_of(len(made), cfg, options.zoom)
    storage.write_bytes(options.out, png_bytes(draw_grid(made, layout)))
    return PreviewResult(options.out, cfg, [s.key for s in made], layout, options.epoch)
