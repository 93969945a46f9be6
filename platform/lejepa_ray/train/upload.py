"""Checkpoint uploads that count only once complete: every shard first, the manifest last.

Each rank writes its part of a checkpoint to a local temporary directory
(:func:`lejepa_ray.train.checkpoint.save`), and Ray Train hands that directory to an upload
function, in the training thread (``checkpoint.upload=sync``) or in a background thread while
training goes on (``async``). Every rank uploads into the same checkpoint directory of the run.
Ray's own copy sends the files in any order, so a reader could find rank 0's manifest in
storage before another rank's shards. :func:`upload` keeps the order that makes a manifest
mean "complete":

1. the rank's own files, the manifest aside;
2. on rank 0 (the one rank whose directory holds ``manifest.json``): wait until the storage
   listing holds every file the manifest names, with its size, that is every rank's upload;
3. then the manifest.

A kill at any point before step 3 leaves a directory without a manifest, and Ray Train has not
registered it (it registers a checkpoint once every rank's upload returned), so no resume takes
it. A checkpoint directory is never reused: a step saved again after a restart gets a new name
(``launch.worker.Reporter``), so files left by an interrupted upload cannot pass for new ones.
:class:`OneInFlight` keeps at most one upload running per rank: the next checkpoint waits for
the previous one.
"""

from __future__ import annotations

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
    local: str | Path,
    filesystem: pafs.FileSystem,
    dest: str,
    *,
    timeout_s: float = 3600.0,
    poll_s: float = 0.2,
) -> None:
    """Copy the checkpoint part in the local directory ``local`` to ``dest`` on
    ``filesystem``: its files, then, if it holds the manifest (rank 0), the manifest once the
    listing of ``dest`` shows every file the manifest names.

    Raises:
        CheckpointError: the other ranks' files did not all arrive within ``timeout_s``.
    """
    local = Path(local)
    names = sorted(str(f.relative_to(local)) for f in local.rglob("*") if f.is_file())
    if not names:  # never an empty part: every rank writes its shards and RNG states
        raise CheckpointError(f"no checkpoint files to upload in {local}")
    filesystem.create_dir(dest)
    # pyarrow's threaded upload to S3 is unsafe (apache/arrow#32372), as Ray Train notes.
    threads = not isinstance(filesystem, pafs.S3FileSystem)
    for name in names:
        if name == mf.MANIFEST_FILE:
            continue
        if "/" in name:
            filesystem.create_dir(f"{dest}/{name.rsplit('/', 1)[0]}")
        pafs.copy_files(
            str(local / name),
            f"{dest}/{name}",
            destination_filesystem=filesystem,
            chunk_size=CHUNK_BYTES,
            use_threads=threads,
        )
    if mf.MANIFEST_FILE not in names:
        return
    data = (local / mf.MANIFEST_FILE).read_bytes()
    wait_for_files(Folder(filesystem, dest), mf.Manifest.parse(data), timeout_s, poll_s)
    with filesystem.open_output_stream(f"{dest}/{mf.MANIFEST_FILE}") as out:
        out.write(data)


def wait_for_files(
    folder: Folder, manifest: mf.Manifest, timeout_s: float, poll_s: float = 0.2
) -> None:
    """Return once ``folder`` lists every file of ``manifest`` with its size.

    Raises:
        CheckpointError: not within ``timeout_s`` seconds (the message says what is missing).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            manifest.check_listing(folder.files())
            return
        except mf.ManifestMismatch as e:
            if time.monotonic() > deadline:
                raise CheckpointError(
                    f"the checkpoint at {folder} is incomplete after {timeout_s:.0f} s: {e}. "
                    "A rank's upload did not finish; its manifest is not written, and Ray Train "
                    "does not register it."
                ) from None
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
