"""``lejepa-ray data convert``: an image folder to parquet shards, checked, resumable, atomic.

Each shard holds the original encoded bytes (no re-encoding loss) with ``label``, ``path``,
``width`` and ``height`` columns. Files are assigned to shards by a fixed random permutation, so
every shard mixes all classes and reading shards in any order still gives mixed batches.

Source and destination are local folders or URIs (``s3://``, ``gs://``), through pyarrow's
filesystems.

Crash safety: a shard is written to a local temporary file and then published whole. On a
local disk that is a rename, atomic; in object storage it is one upload, and an object only
appears once its upload completes. Each shard records a fingerprint of its inputs. A rerun keeps
every shard whose fingerprint still matches and rewrites the rest. The manifest
``dataset.json`` (shards, class names, skip counts) is published last, the same way; readers go
through it, and refuse a folder that holds the ``_CONVERTING`` marker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from lejepa_ray.data.decode import DEFAULT_MAX_PIXELS, BadImage, SkipCounts, decode_rgb
from lejepa_ray.data.sources import INCOMPLETE, MANIFEST, list_image_folder
from lejepa_ray.errors import check_field
from lejepa_ray.storage import Folder, check_output, resolve_filesystem, uri_of

FORMAT = "lejepa-ray/parquet-v1"
_META_KEY = b"lejepa_ray.shard"
_EXAMPLES_PER_REASON = 20
_R = TypeVar("_R")


@dataclass
class ConvertSummary:
    """What a conversion produced."""

    images: int = 0
    """Images written, over all shards."""
    skipped: SkipCounts = field(default_factory=SkipCounts)
    """Images left out, per reason."""
    skipped_files: list[dict] = field(default_factory=list)
    """Up to 20 examples per reason: ``{"path", "reason", "detail"}``."""
    shards_written: int = 0
    """Shards written by this run."""
    shards_reused: int = 0
    """Shards a previous run had completed with the same inputs, kept as they were."""
    bytes: int = 0
    """Total size of the shards as stored."""
    seconds: float = 0.0
    """Wall time of this run."""


@dataclass
class ConvertOptions:
    """Convert an image folder (labels from first-level subfolders) to parquet shards of
    encoded images, each image decode-checked. Rerunning resumes an interrupted conversion."""

    src: str
    """Image folder: a local path or a URI (``s3://``, ``gs://``)."""
    dst: str
    """Output folder for the shards and ``dataset.json``: a local path or a URI."""
    shard_size_mb: float = 256.0
    """Target shard size in MiB."""
    workers: int = 1
    """Parallel processes."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Skip larger images as decompression bombs."""


def convert_image_folder(
    src: str,
    dst: str,
    *,
    shard_size_mb: float = ConvertOptions.shard_size_mb,
    workers: int = ConvertOptions.workers,
    max_pixels: int = ConvertOptions.max_pixels,
    progress: Callable[[int, int], None] | None = None,
) -> ConvertSummary:
    """Convert the images under ``src`` to parquet shards in the folder ``dst``.

    Args:
        src: image folder, local or a URI (labels from first-level subfolders, as in
            ImageNet).
        dst: output folder, local or a URI such as ``s3://bucket/shards``; created if needed.
            Rerunning into it resumes or does nothing.
        shard_size_mb: target shard size in MiB of encoded images.
        workers: processes that decode-check and write shards in parallel.
        max_pixels: images with more pixels are skipped (``too_large``).
        progress: called as ``progress(files_done, files_total)`` at the start and whenever a
            shard is finished.

    Raises:
        SourceError: ``src`` does not exist or holds no images.
    """
    check_field(shard_size_mb > 0, "shard_size_mb", shard_size_mb, "a size > 0")
    check_field(workers >= 1, "workers", workers, "at least 1")
    start = time.perf_counter()
    listing = list_image_folder(src, name=f"the image folder {str(src)!r}")
    check_output(str(dst), "output folder")
    out = Folder.at(dst)
    out.filesystem.create_dir(out.path, recursive=True)

    # A fixed permutation (not the sorted order) so each shard mixes the classes.
    order = np.random.default_rng(0).permutation(len(listing.files))
    budget = shard_size_mb * 2**20
    plans: list[list[dict]] = [[]]
    used = 0.0
    for i in order.tolist():
        if plans[-1] and used + listing.sizes[i] > budget:
            plans.append([])
            used = 0.0
        plans[-1].append(
            {
                "file": listing.files[i],
                "path": listing.keys[i],
                "label": listing.labels[i],
                "size": listing.sizes[i],
                "mtime": listing.mtimes[i],
            }
        )
        used += listing.sizes[i]

    jobs: list[dict[str, Any]] = []
    for index, plan in enumerate(plans):
        fingerprint = _fingerprint(plan, listing.classes, max_pixels)
        jobs.append(
            {
                "index": index,
                "plan": plan,
                "fingerprint": fingerprint,
                "src": uri_of(listing.filesystem, listing.root),
                "final": f"{out.uri}/{_shard_name(index)}",
                "classes": listing.classes,
                "max_pixels": max_pixels,
            }
        )
    # From here until the new manifest is published the folder is marked unfinished, so no
    # reader mixes the shards of two conversions (a rerun may rewrite shards of the old one).
    out.write(INCOMPLETE, b"a conversion is running or was interrupted; rerun it\n")
    out.delete(MANIFEST)
    _remove_leftovers(out, keep={_shard_name(i) for i in range(len(plans))})

    summary = ConvertSummary()
    results = []
    done, total = 0, len(listing.files)
    if progress:
        progress(done, total)
    # Forked children would inherit the parent's object-storage client (threads, sockets),
    # which is not fork-safe: spawn them when a URI is involved.
    remote = "://" in src or "://" in dst
    context = multiprocessing.get_context("spawn") if remote else None
    pool = ProcessPoolExecutor(workers, mp_context=context) if workers > 1 else _InProcess()
    with pool:
        for job, result in zip(jobs, pool.map(_convert_shard, jobs), strict=True):
            results.append(result)
            done += len(job["plan"])
            if progress:
                progress(done, total)

    shards = []
    for job, (stats, reused, size) in zip(jobs, results, strict=True):
        summary.images += stats["rows"]
        summary.skipped.update(stats["skipped"])
        for example in stats["examples"]:
            if (
                sum(e["reason"] == example["reason"] for e in summary.skipped_files)
                < _EXAMPLES_PER_REASON
            ):
                summary.skipped_files.append(example)
        summary.shards_reused += reused
        summary.shards_written += not reused
        summary.bytes += size
        shards.append(
            {
                "file": _shard_name(job["index"]),
                "rows": stats["rows"],
                "bytes": size,
                "fingerprint": job["fingerprint"],
            }
        )
    manifest = {
        "format": FORMAT,
        "source": listing.root,
        "classes": listing.classes,
        "images": summary.images,
        "skipped": dict(summary.skipped),
        "skipped_examples": summary.skipped_files,
        "shards": shards,
    }
    with _local_temp(f"{out.uri}/{MANIFEST}") as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
        _publish(tmp, f"{out.uri}/{MANIFEST}")
    out.delete(INCOMPLETE)
    summary.seconds = time.perf_counter() - start
    return summary


def format_summary(summary: ConvertSummary, dst: str) -> str:
    """The human-readable report printed at the end of ``lejepa-ray data convert``."""
    lines = [
        f"Wrote {summary.images:,} images to {dst} in "
        f"{summary.shards_written + summary.shards_reused} shards "
        f"({summary.shards_written} written, {summary.shards_reused} already complete), "
        f"{summary.bytes / 2**20:,.1f} MiB, in {summary.seconds:.1f} s.",
    ]
    if summary.skipped.total:
        lines.append(f"Skipped {summary.skipped.total:,} files:")
        for reason, count in summary.skipped.most_common():
            example = next(e for e in summary.skipped_files if e["reason"] == reason)
            lines.append(f"  {reason:<13}{count:>8,}   e.g. {example['path']}: {example['detail']}")
        lines.append(f"Examples of every reason are in {dst.rstrip('/')}/{MANIFEST}.")
    else:
        lines.append("Skipped 0 files: every image decoded.")
    return "\n".join(lines)


class _InProcess:
    """``ProcessPoolExecutor``'s ``map`` in this process: one worker needs no pool."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def map(self, fn: Callable[[dict], _R], items: Iterable[dict]) -> Iterator[_R]:
        return map(fn, items)


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def _fingerprint(plan: list[dict], classes: list[str], max_pixels: int) -> str:
    inputs = [
        FORMAT,
        classes,
        max_pixels,
        [(r["path"], r["label"], r["size"], r["mtime"]) for r in plan],
    ]
    return hashlib.blake2b(json.dumps(inputs).encode(), digest_size=16).hexdigest()


def _convert_shard(job: dict) -> tuple[dict, bool, int]:
    """Write one shard unless a complete one with the same inputs exists:
    (stats, reused, size in bytes)."""
    out_fs, final = resolve_filesystem(job["final"])
    info = out_fs.get_file_info(final)
    if info.type == pafs.FileType.File:
        try:
            meta = json.loads(pq.read_schema(final, filesystem=out_fs).metadata[_META_KEY])
            if meta["fingerprint"] == job["fingerprint"]:
                return meta, True, info.size
        except Exception:
            pass  # unreadable or foreign: rewrite it
    src_fs, _ = resolve_filesystem(job["src"])
    rows: dict[str, list] = {"image": [], "label": [], "path": [], "width": [], "height": []}
    skipped = SkipCounts()
    examples: list[dict[str, str]] = []
    for record in job["plan"]:
        try:
            with src_fs.open_input_stream(record["file"]) as f:
                data = f.read()
            img = decode_rgb(data, job["max_pixels"])
        except BadImage as e:
            skipped[e.reason] += 1
            if len(examples) < _EXAMPLES_PER_REASON * 5:
                examples.append({"path": record["path"], "reason": e.reason, "detail": e.detail})
            continue
        rows["image"].append(data)
        rows["label"].append(record["label"])
        rows["path"].append(record["path"])
        rows["width"].append(img.width)
        rows["height"].append(img.height)
    stats = {
        "fingerprint": job["fingerprint"],
        "rows": len(rows["image"]),
        "skipped": dict(skipped),
        "examples": examples,
    }
    schema = pa.schema(
        [
            ("image", pa.binary()),
            ("label", pa.int64()),
            ("path", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
        ],
        metadata={_META_KEY: json.dumps(stats), b"lejepa_ray.classes": json.dumps(job["classes"])},
    )
    table = pa.table(rows, schema=schema)
    with _local_temp(job["final"]) as tmp:
        # Row groups of ~64 images keep a reader's memory small and its reads parallel.
        pq.write_table(table, tmp, row_group_size=64, compression="none")
        size = tmp.stat().st_size
        _publish(tmp, job["final"])
    return stats, False, size


@contextlib.contextmanager
def _local_temp(final: str) -> Iterator[Path]:
    """A local file to write ``final``'s content into before :func:`_publish`: hidden beside
    it on a local disk (so the rename stays on one filesystem; an interrupted run's is removed
    by the next one), else in a temporary folder removed on the way out, whatever happens."""
    name = f".{final.rsplit('/', 1)[-1]}.{os.getpid()}.tmp"
    if "://" not in final:
        yield Path(final).with_name(name)
        return
    with tempfile.TemporaryDirectory(prefix="lejepa-convert-") as folder:
        yield Path(folder) / name


def _publish(tmp: Path, final: str) -> None:
    """Make the completely written local file ``tmp`` visible as ``final`` (a local path or
    URI) at once: a rename on a local disk, a single upload to object storage."""
    if "://" not in final:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        return
    filesystem, where = resolve_filesystem(final)
    pafs.copy_files(str(tmp), where, destination_filesystem=filesystem)


def _remove_leftovers(out: Folder, keep: set[str]) -> None:
    """Delete temporary files of interrupted runs and shards a different plan left behind."""
    for name in out.files():
        if "/" in name:
            continue  # only the folder's own level holds shards
        stale_shard = name.startswith("shard-") and name.endswith(".parquet") and name not in keep
        if (name.startswith(".") and name.endswith(".tmp")) or stale_shard:
            print(
                f"removing {name} (left by an earlier, different or interrupted run)",
                file=sys.stderr,
            )
            out.delete(name)
