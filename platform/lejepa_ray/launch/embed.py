"""``lejepa-ray embed``: a frozen backbone's features of every image of a source, as parquet.

Batch inference with Ray Data, on CPUs or GPUs, on one machine or across a cluster:

    the source's rows, in order (``readers.source_plan``, no shuffle), units of a batch
      -> tasks: read, decode, resize the short side and centre-crop, as ``eval`` does
      -> an actor pool, each actor holding the frozen backbone (``--workers`` actors, a GPU
         each with ``--use_gpu``): uint8 (B, 3, S, S) -> float32 (B, D), written as one
         parquet file per batch into a staging folder beside ``out``

The driver counts the rows written, for the progress bar and images/s, and moves the staging
folder to ``out`` only when every row is written, so ``out`` appears complete or not at all
(on an object store the files are moved one by one at the end and ``_SUCCESS`` comes last).

Each file has ``key`` (string: the image's relative path, or row id), ``label`` (int64, -1
when unlabelled) and ``embedding`` (fixed-size list of D float32). The features are those
``eval`` probes: for the same images, the same numbers (``tests/integration/test_embed.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import torch
from ray.data import ActorPoolStrategy

from lejepa_ray import storage
from lejepa_ray.compat import quiet_logger
from lejepa_ray.data.decode import BadImage, decode_rgb
from lejepa_ray.data.eval_images import prepare_image
from lejepa_ray.data.plan import Plan
from lejepa_ray.data.readers import Reader, source_plan
from lejepa_ray.data.sources import check_path, data_from_arg
from lejepa_ray.errors import ConfigError, SourceError, first_line
from lejepa_ray.evaluation.frozen import FEATURES, load_frozen
from lejepa_ray.evaluation.probe import Featurizer
from lejepa_ray.launch import runtime
from lejepa_ray.model.config import ScalingConfig

SUCCESS_FILE = "_SUCCESS"


@dataclass
class EmbedOptions:
    """What ``lejepa-ray embed`` embeds, with what, and where it writes."""

    source: str
    """A run directory (its latest checkpoint), a checkpoint directory or an ``export`` folder;
    on a cluster, a URI or a path on storage every node mounts (each actor loads it)."""
    data: str
    """The images: ``digits``, ``synthetic``, an image folder or parquet shards, local or a URI;
    a ``:train``, ``:val`` or ``:all`` suffix picks that split (``digits:val``)."""
    out: str
    """Output folder for the parquet files, local or a URI (``s3://...``); it must not hold
    files yet."""
    size: int | None = None
    """Image side in px (default: the size the backbone was trained at)."""
    batch_size: int = 64
    """Images per inference batch, and per output file."""
    workers: int | None = None
    """Actors holding the backbone (default: :func:`default_workers`, one per GPU of the
    cluster with ``use_gpu``, else half the CPUs, the other half reading)."""
    use_gpu: bool = False
    """Run each actor on a GPU."""
    features: str = "backbone"
    """``backbone`` (pooled features, what ``export`` keeps) or, for a checkpoint,
    ``projector`` (the projector's outputs)."""


@dataclass
class EmbedResult:
    """What :func:`embed` wrote."""

    out: str
    images: int
    """Rows written."""
    skipped: int
    """Images that did not decode."""
    dim: int
    """Embedding size, D."""
    image_size: int
    seconds: float
    """Wall time of the Ray Data pipeline, its start (actors loading the model) included."""
    steady_images_per_s: float | None = None
    """Images per second from the first batch written to the last (None: one batch)."""

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


class Embedder:
    """An actor's backbone: ``{"image": uint8 (B, 3, S, S), "key", "label"}`` -> one parquet
    file in ``staging`` of ``key``, ``label`` and ``embedding`` (fixed-size list of D
    float32); returns ``{"rows": [B]}`` for the driver's count. Writing here, a file per batch,
    keeps the embeddings out of the object store and lets the driver count each batch."""

    def __init__(self, source: str, features: str, use_gpu: bool, staging: str):
        torch.set_num_threads(1)  # one actor per CPU: the pool scales across cores
        self.device = torch.device("cuda" if use_gpu else "cpu")
        # Each actor loads the model from where it lies (a URI, or a path every node sees):
        # handing it over as an argument would go through the object store, and Ray warns
        # that a restarted actor could lose such an argument.
        model, _ = load_frozen(source, features)
        self.model = model.to(self.device).eval()
        self.filesystem, self.root = storage.resolve_filesystem(staging)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = torch.from_numpy(np.ascontiguousarray(batch["image"])).to(self.device)
        with torch.inference_mode():
            emb = self.model.features(images).float().cpu().numpy()
        flat = pa.array(emb.reshape(-1), pa.float32())
        table = pa.table(
            {
                "key": pa.array([str(k) for k in batch["key"]], pa.string()),
                "label": pa.array(batch["label"], pa.int64()),
                "embedding": pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]),
            }
        )
        # Named after the batch's keys: a batch Ray runs again (a restarted actor, a lost
        # output) overwrites its file instead of writing its rows twice.
        name = hashlib.sha1("\n".join(table["key"].to_pylist()).encode()).hexdigest()[:20]
        path = f"{self.root}/part-{name}.parquet"
        pq.write_table(table, path, filesystem=self.filesystem)
        return {"rows": np.array([len(emb)])}


def read_images(
    batch: dict[str, np.ndarray], plan: Plan, reader: Reader, size: int, max_pixels: int
) -> Iterator[dict[str, np.ndarray]]:
    """Unit numbers ``id`` -> the units' decodable images, uint8 (B, 3, size, size), prepared as
    ``eval`` prepares them, with ``key`` and ``label``; a unit with none yields nothing (the
    driver counts what was not written as skipped)."""
    torch.set_num_threads(1)  # Ray Data scales tasks across cores, not threads
    for g in batch["id"]:
        _, spans = plan.unit(int(g))
        rows = reader.read(spans)
        images, keep = [], []
        for i, raw in enumerate(rows["image"]):
            try:
                images.append(prepare_image(decode_rgb(raw, max_pixels), size).numpy())
                keep.append(i)
            except BadImage:
                continue
        if not keep:
            continue
        yield {
            "image": np.stack(images),
            "key": np.asarray([str(rows["key"][i]) for i in keep], dtype=object),
            "label": np.asarray(rows["label"], dtype=np.int64)[keep],
        }


def embed(opts: EmbedOptions, progress: Callable[[int, int], None] | None = None) -> EmbedResult:
    """Embed every image of ``opts.data`` with the frozen backbone at ``opts.source`` and write
    the parquet files to ``opts.out`` (see the module docstring for the layout).

    ``progress(done, total)`` is called as rows are written (total: the rows listed).

    Raises:
        ConfigError, SourceError, CheckpointError: before Ray starts, for a bad option, data
            that is not there, a model that does not load, or an ``out`` that holds files.
    """
    if opts.features not in FEATURES:
        raise ConfigError(f"features must be one of {', '.join(FEATURES)}, got {opts.features!r}.")
    for name in ("batch_size", "workers"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            raise ConfigError(f"{name}={value} is invalid: expected at least 1.")
    check_out(opts.out)
    model, trained_size = load_frozen(opts.source, opts.features)
    size = opts.size or trained_size
    dim = model_dim(model, size)  # a size the model cannot take fails here, before Ray
    data = replace(
        data_from_arg(opts.data, size), shuffle="none", transform_batch_size=opts.batch_size
    )
    # Absolute: the actors and tasks run in another working directory than this process.
    if data.path is not None:
        data = replace(data, path=storage.absolute(data.path))
    out = storage.absolute(opts.out)
    check_path(data)
    listed = source_plan(data)
    total = listed.plan.rows_per_epoch
    if opts.use_gpu:
        runtime.check_local_gpus(ScalingConfig(num_workers=opts.workers or 1, use_gpu=True))

    source = storage.absolute(str(opts.source))
    local = not runtime.joins_cluster()
    runtime.connect(train_cpus=0)
    workers = opts.workers or default_workers(opts.use_gpu, local)
    staging = staging_dir(out)
    start = time.perf_counter()
    units = listed.plan.units_per_epoch
    ds: ray.data.Dataset = ray.data.from_items(
        [{"id": g} for g in range(units)], override_num_blocks=units
    )
    # Progress bars and Ray Data's INFO lines off: the command prints its own progress. A
    # block per unit, one batch of images: Ray Data would otherwise gather units up to its
    # block target (128 MiB), and the actors and the progress would see them in lumps.
    ds.context.enable_progress_bars = False
    ds.context.target_max_block_size = opts.batch_size * 3 * size * size
    ds = ds.map_batches(
        read_images,  # type: ignore[arg-type]  # Ray's stubs: a 1-argument fn, no fn_kwargs
        fn_kwargs={
            "plan": listed.plan,
            "reader": listed.reader,
            "size": size,
            "max_pixels": data.max_pixels,
        },
        batch_size=None,
        batch_format="numpy",
    )
    ds = ds.map_batches(
        Embedder,
        fn_constructor_kwargs={
            "source": source,
            "features": opts.features,
            "use_gpu": opts.use_gpu,
            "staging": staging,
        },
        compute=ActorPoolStrategy(size=workers),
        num_gpus=1 if opts.use_gpu else 0,
        # Each actor holds a copy of the model: reserve it, so that Ray places no more actors
        # on a node than its memory holds. Also what keeps the reading tasks apart from the
        # actors (Ray Data fuses operators only of equal resources): fused, the actors would
        # batch unit numbers instead of images, and read with their one CPU each, where tasks
        # read on every CPU of the cluster.
        memory=2 * sum(t.numel() * t.element_size() for t in model.state_dict().values()),
        batch_size=opts.batch_size,
        batch_format="numpy",
    )
    written = first_rows = 0
    first_at = None
    try:
        with quiet_logger("ray.data", logging.ERROR):
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                written += int(batch["rows"].sum())
                if first_at is None:
                    first_at, first_rows = time.perf_counter(), written
                if progress is not None:
                    progress(written, total)
        if not written:
            raise SourceError(f"no image of {opts.data} could be decoded: nothing to embed.")
    except BaseException:  # Ctrl+C included: no half-written staging folder is left behind
        remove_dir(staging)
        raise
    end = time.perf_counter()
    publish(staging, out)
    steady = None
    if first_at is not None and end > first_at and written > first_rows:
        steady = (written - first_rows) / (end - first_at)
    return EmbedResult(out, written, total - written, dim, size, end - start, steady)


def default_workers(use_gpu: bool, local: bool) -> int:
    """Actors when ``workers`` is not given: the connected cluster's GPUs with ``use_gpu``;
    else half its CPUs (this machine's cores on a local instance, which declares more logical
    CPUs than it has), the other half reading and decoding: every actor takes its CPU for the
    whole run, and without CPUs left no image would be read."""
    resources = ray.cluster_resources()
    if use_gpu:
        return max(1, int(resources.get("GPU", 1)))
    cpus = len(os.sched_getaffinity(0)) if local else int(resources.get("CPU", 1))
    return max(1, cpus // 2)


def model_dim(model: Featurizer, size: int) -> int:
    """D, from one blank image (cheap, and exact whatever the head)."""
    with torch.inference_mode():
        return int(model.features(torch.zeros(1, 3, size, size, dtype=torch.uint8)).shape[-1])


def check_out(out: str) -> None:
    """Refuse an ``out`` that already holds files (a second run would mix two embeddings), or
    that cannot be reached, created or written, before anything slow.

    Raises:
        ConfigError: what is wrong with ``out``.
    """
    try:
        filesystem, root = storage.resolve_filesystem(out)
        info = filesystem.get_file_info(root)
    except OSError as e:
        raise ConfigError(
            f"the output folder {out!r} cannot be reached: {first_line(e)}."
        ) from None
    if info.type == pafs.FileType.File:
        raise ConfigError(f"the output folder {out!r} is a file: give a new folder.")
    if info.type == pafs.FileType.Directory and filesystem.get_file_info(pafs.FileSelector(root)):
        raise ConfigError(
            f"the output folder {out!r} already holds files: give a new folder, or delete it."
        )
    storage.check_output(out, "output folder")


def remove_dir(uri: str) -> None:
    """Delete the folder ``uri`` and what it holds, if it is there."""
    filesystem, root = storage.resolve_filesystem(uri)
    with contextlib.suppress(OSError):
        filesystem.delete_dir(root)


def staging_dir(out: str) -> str:
    """A new folder beside ``out`` where the files are written until they are all there."""
    staging = f"{out.rstrip('/')}.incomplete-{uuid.uuid4().hex[:8]}"
    filesystem, root = storage.resolve_filesystem(staging)
    filesystem.create_dir(root, recursive=True)
    return staging


def publish(staging: str, out: str) -> None:
    """Move the finished ``staging`` folder to ``out`` (a rename on a local disk), then mark it
    complete with ``_SUCCESS``."""
    filesystem, src = storage.resolve_filesystem(staging)
    _, dst = storage.resolve_filesystem(out)
    if storage.is_local(out):
        if Path(dst).is_dir():  # an empty folder the user made: check_out saw no files in it
            Path(dst).rmdir()
        filesystem.move(src, dst)
    else:
        for info in filesystem.get_file_info(pafs.FileSelector(src)):
            filesystem.move(info.path, f"{dst}/{info.base_name}")
        filesystem.delete_dir(src)
    storage.write_text(f"{out.rstrip('/')}/{SUCCESS_FILE}", "")
