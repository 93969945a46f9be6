"""Checkpoint uploads that count only once complete: every shard first, the manifest last.

Each rank writes its part of a checkpoint to a local temporary directory
(:func:`lejepa_ray.train.checkpoint.write`), and Ray Train hands that directory to an upload
function, in the training thread (``checkpoint.upload=sync``) or in a background thread while
training goes on (``async``). Every rank uploads into the same checkpoint directory of the run.
Ray's own copy sends the files in any order, so a reader could find rank 0's manifest in
storage before another rank's shards. :func:`upload` keeps the order that makes a manifest
mean "complete":

1. the rank's checksums (:class:`~lejepa_ray.train.manifest.Part`): reading its files back
   here keeps that work off the training thread too;
2. the rank's files, then, on every rank but 0, its manifest entries
   (``manifest.parts/<rank>.json``);
3. on rank 0: wait until the storage holds every other rank's entries for this checkpoint
   (they carry its token), merge them with its own, and wait until the listing holds every
   file they name, with its size;
4. then the manifest.

A kill at any point before step 4 leaves a directory without a manifest, and Ray Train has not
registered it (it registers a checkpoint once every rank's upload returned), so no resume takes
it. A step saved again after a restart gets a new directory name (``launch.reporter.Reporter``);
should a directory be reused anyway (its listing failed), the token keeps an interrupted
upload's entries from passing for new ones, and each rank stores its entries after its files.
:class:`OneInFlight` keeps at most one upload running per rank: the next checkpoint waits for
the previous one.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pyarrow import fs as pafs

from lejepa_ray.errors import CheckpointError
from lejepa_ray.storage import Folder
from lejepa_ray.train import manifest as mf

log = logging.getLogger(__name__)

TRIES = 3
"""Tries of an upload before the attempt fails (a transient storage error is retried)."""
CHUNK_BYTES = 64 * 2**20
"""pyarrow copies in chunks of this many bytes (as Ray Train's own upload does)."""


def upload(
    part: mf.Part,
    filesystem: pafs.FileSystem,
    dest: str,
    *,
    timeout_s: float = 3600.0,
    poll_s: float = 0.2,
) -> None:
    """Copy the checkpoint ``part`` (one rank's local directory) to ``dest`` on
    ``filesystem`` with its manifest entries; rank 0 then writes the manifest, once ``dest``
    holds every rank's entries and every file they name.

    Raises:
        CheckpointError: the other ranks' files did not all arrive within ``timeout_s``.
    """
    local = Path(part.directory)
    names = part.names()
    if not names:  # never an empty part: every rank writes its shards and RNG states
        raise CheckpointError(f"no checkpoint files to upload in {local}")
    entries = part.describe(names)
    filesystem.create_dir(dest)
    # pyarrow's threaded upload to S3 is unsafe (apache/arrow#32372), as Ray Train notes.
    threads = not isinstance(filesystem, pafs.S3FileSystem)
    for name in names:
        if "/" in name:
            filesystem.create_dir(f"{dest}/{name.rsplit('/', 1)[0]}")
        pafs.copy_files(
            str(local / name),
            f"{dest}/{name}",
            destination_filesystem=filesystem,
            chunk_size=CHUNK_BYTES,
            use_threads=threads,
        )
    folder = Folder(filesystem, dest)
    if part.rank != 0:
        folder.write(mf.part_file(part.rank), json.dumps(entries).encode())
        return
    deadline = time.monotonic() + timeout_s
    others = _OthersEntries(folder, part)
    _wait(folder, others.missing, deadline, timeout_s, poll_s)
    merged = mf.merge([entries, *(others.got[r] for r in sorted(others.got))])  # rank order
    data = json.dumps(merged).encode()
    _wait(folder, _files_missing(mf.Manifest.parse(data)), deadline, timeout_s, poll_s)
    folder.write(mf.MANIFEST_FILE, data)


class _OthersEntries:
    """Rank 0's view of the other ranks' entries files in ``folder``: ``missing`` (for
    :func:`_wait`) reads those that appeared, keeping the ones that carry ``part``'s token."""

    def __init__(self, folder: Folder, part: mf.Part):
        self.folder, self.part = folder, part
        self.got: dict[int, dict] = {}

    def missing(self, listing: dict[str, int]) -> str | None:
        for rank in range(1, self.part.world):
            name = mf.part_file(rank)
            if rank in self.got or name not in listing:
                continue
            try:
                entries = json.loads(self.folder.read(name) or b"")
            except ValueError:  # a local or NFS file is listed before it is written: later
                continue
            if entries.get("token") == self.part.token:  # else an earlier attempt's: later
                self.got[rank] = entries
        late = [r for r in range(1, self.part.world) if r not in self.got]
        return f"the manifest entries of rank(s) {late} are missing" if late else None


def _files_missing(manifest: mf.Manifest) -> Callable[[dict[str, int]], str | None]:
    def missing(listing: dict[str, int]) -> str | None:
        try:
            manifest.check_listing(listing)
        except mf.ManifestMismatch as e:
            return str(e)
        return None

    return missing


def _wait(
    folder: Folder,
    missing: Callable[[dict[str, int]], str | None],
    deadline: float,
    timeout_s: float,
    poll_s: float,
) -> None:
    """Poll ``folder``'s listing until ``missing`` finds nothing missing in it.

    Raises:
        CheckpointError: not by ``deadline`` (``time.monotonic``; ``timeout_s`` after rank
            0's first wait began), with what is still missing."""
    while True:
        what = missing(folder.files())
        if what is None:
            return
        if time.monotonic() > deadline:
            raise CheckpointError(
                f"the checkpoint at {folder} is incomplete after {timeout_s:.0f} s: {what}. "
                "A rank's upload did not finish; its manifest is not written, and Ray Train "
                "does not register it."
            )
        time.sleep(poll_s)


def _final_error(error: Exception, tries: int) -> CheckpointError:
    """The error of an upload that failed ``tries`` times, worded so that Ray Train does not
    retry it (it retries errors whose text holds ``AWS Error <code>``)."""
    text = f"{type(error).__name__}: {str(error)[:500]}".replace("AWS Error", "AWS error")
    return CheckpointError(f"uploading a checkpoint failed {tries} times; the last error: {text}")


class OneInFlight:
    """At most one checkpoint upload running at a time in this process.

    :meth:`start` waits for the previous upload to end and returns the seconds it waited; the
    upload then runs ``wrap(fn)``, which marks it ended however it ends and removes its local
    directory."""

    def __init__(self) -> None:
        self._idle = threading.Event()
        self._idle.set()
        self.error: BaseException | None = None
        """What the last upload raised, if it failed (None while one runs)."""

    def start(self) -> float:
        started = time.perf_counter()
        self._idle.wait()
        self._idle.clear()
        return time.perf_counter() - started

    def wait(self) -> float:
        """Wait for the upload in flight, if any; the seconds waited."""
        started = time.perf_counter()
        self._idle.wait()
        return time.perf_counter() - started

    def release(self, local: str | Path) -> None:
        """End the upload :meth:`start` began that never ran (its report failed)."""
        shutil.rmtree(local, ignore_errors=True)
        self._idle.set()

    def wrap(
        self,
        fn: Callable[..., object],
        local: str | Path,
        tries: int = TRIES,
        backoff_s: float = 2.0,
    ) -> Callable[..., object]:
        """``fn``, tried up to ``tries`` times (a :class:`CheckpointError` is not retried: it
        is not transient), then the slot freed and ``local`` removed.

        The retries are ours: Ray Train retries an upload function whose error names a
        transient S3 error, but by then this one has removed its local files, so what it
        raises at the end names no such error (:func:`_final_error`)."""

        def run(*args: object, **kwargs: object) -> object:
            self.error = None
            try:
                for attempt in range(1, tries + 1):
                    try:
                        return fn(*args, **kwargs)
                    except CheckpointError:
                        raise
                    except Exception as e:
                        if attempt == tries:
                            raise _final_error(e, tries) from None
                        log.warning(
                            "checkpoint upload failed (%s: %s); trying again (%d of %d)",
                            type(e).__name__,
                            str(e)[:300],
                            attempt + 1,
                            tries,
                        )
                        time.sleep(backoff_s * 2 ** (attempt - 1))
                raise AssertionError("unreachable")
            except BaseException as e:
                self.error = e
                raise
            finally:
                shutil.rmtree(local, ignore_errors=True)
                self._idle.set()

        return run

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()
