"""train/upload.py: every rank's files first, rank 0's manifest last, one upload at a time.

A local pyarrow filesystem stands in for the run's storage; each rank's part of a checkpoint is
a local directory as ``checkpoint.write`` leaves it (``manifest.Part``), without a manifest."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from pyarrow import fs as pafs

from lejepa_ray.errors import CheckpointError
from lejepa_ray.train import manifest as mf
from lejepa_ray.train import upload

RANK0 = {"state.json": b'{"step": 8}', "__0_0.distcp": b"rank zero shard" * 100}
RANK1 = {"__1_0.distcp": b"rank one shard" * 300, "rng/rank_1.bin": b"\x01\x02\x03"}


def _part(directory: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    return directory


def _ranks(tmp_path: Path) -> tuple[mf.Part, mf.Part, bytes]:
    """Rank 0's and rank 1's local parts of a two-rank checkpoint, and the manifest naming
    both that rank 0 must write."""
    rank0 = mf.Part(str(_part(tmp_path / "local0", RANK0)), 0, world=2, chunks={}, token="t8")
    rank1 = mf.Part(str(_part(tmp_path / "local1", RANK1)), 1, world=2, chunks={}, token="t8")
    manifest = json.dumps(mf.merge([rank0.describe(), rank1.describe()])).encode()
    return rank0, rank1, manifest


def _entries(part: mf.Part) -> dict[str, bytes]:
    """What a rank other than 0 stores beside its files: its manifest entries."""
    return {mf.part_file(part.rank): json.dumps(part.describe()).encode()}


def _listing(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in directory.rglob("*")
        if p.is_file()
    }


def test_a_part_without_a_manifest_uploads_all_its_files(tmp_path):
    _, rank1, _ = _ranks(tmp_path)
    dest = tmp_path / "run" / "checkpoint_00000008"
    upload.upload(rank1, pafs.LocalFileSystem(), str(dest), timeout_s=0.0)
    # nested files too, then its checksums for rank 0; no manifest, and no wait for one
    assert _listing(dest) == {**RANK1, **_entries(rank1)}
    entries = json.loads(_listing(dest)[mf.part_file(1)])
    assert entries["files"]["__1_0.distcp"]["size"] == len(RANK1["__1_0.distcp"])


def test_rank_0_writes_the_manifest_only_once_every_ranks_files_are_stored(tmp_path):
    rank0, rank1, manifest = _ranks(tmp_path)
    dest = tmp_path / "run" / "checkpoint_00000008"
    filesystem = pafs.LocalFileSystem()
    errors: list[BaseException] = []

    def rank0_upload():
        try:
            upload.upload(rank0, filesystem, str(dest), timeout_s=30.0, poll_s=0.01)
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    thread = threading.Thread(target=rank0_upload)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while set(_listing(dest)) != set(RANK0) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _listing(dest) == RANK0  # its own files, the manifest held back
        time.sleep(0.2)  # many polls of the listing: still waiting for rank 1
        assert thread.is_alive() and not (dest / mf.MANIFEST_FILE).exists()
        # Rank 1's entries are there but the storage shows its big file truncated: no manifest.
        _part(dest, {**RANK1, "__1_0.distcp": RANK1["__1_0.distcp"][:10], **_entries(rank1)})
        time.sleep(0.2)
        assert thread.is_alive() and not (dest / mf.MANIFEST_FILE).exists()
        upload.upload(rank1, filesystem, str(dest), timeout_s=0.0)  # rank 1's whole upload
    finally:
        thread.join(timeout=10)
    assert not thread.is_alive() and errors == []
    assert (dest / mf.MANIFEST_FILE).read_bytes() == manifest
    assert _listing(dest) == {**RANK0, **RANK1, **_entries(rank1), mf.MANIFEST_FILE: manifest}


def test_a_rank_that_never_arrives_times_out_naming_it_and_leaves_no_manifest(tmp_path):
    rank0, _, _ = _ranks(tmp_path)
    dest = tmp_path / "run" / "checkpoint_00000008"
    started = time.monotonic()
    with pytest.raises(CheckpointError, match=r"entries of rank\(s\) \[1\] are missing") as caught:
        upload.upload(rank0, pafs.LocalFileSystem(), str(dest), timeout_s=0.3, poll_s=0.05)
    assert time.monotonic() - started >= 0.3  # it waited out the timeout, not less
    assert "incomplete" in str(caught.value)
    assert _listing(dest) == RANK0  # rank 0's own files, and no manifest


def test_a_truncated_file_at_the_timeout_is_named_with_its_sizes(tmp_path):
    rank0, rank1, _ = _ranks(tmp_path)
    dest = tmp_path / "run" / "checkpoint_00000008"
    _part(dest, {**RANK1, "__1_0.distcp": b"short", **_entries(rank1)})
    with pytest.raises(CheckpointError, match=r"__1_0\.distcp has 5 bytes.*truncated"):
        upload.upload(rank0, pafs.LocalFileSystem(), str(dest), timeout_s=0.1, poll_s=0.02)
    assert not (dest / mf.MANIFEST_FILE).exists()


def test_entries_of_an_earlier_attempt_or_half_written_are_waited_past(tmp_path):
    rank0, rank1, manifest = _ranks(tmp_path)
    dest = tmp_path / "run" / "checkpoint_00000008"
    filesystem = pafs.LocalFileSystem()
    # An interrupted earlier upload into the same directory left rank 1's files and entries.
    stale = mf.Part(rank1.directory, 1, world=2, chunks={}, token="an earlier attempt")
    _part(dest, {**RANK1, **_entries(stale)})
    for left in (_entries(stale), {mf.part_file(1): b""}):  # stale, then listed but unwritten
        _part(dest, left)
        with pytest.raises(CheckpointError, match=r"entries of rank\(s\) \[1\]"):
            upload.upload(rank0, filesystem, str(dest), timeout_s=0.2, poll_s=0.02)
        assert not (dest / mf.MANIFEST_FILE).exists()
    upload.upload(rank1, filesystem, str(dest), timeout_s=0.0)  # this attempt's
    upload.upload(rank0, filesystem, str(dest), timeout_s=5.0, poll_s=0.02)
    assert (dest / mf.MANIFEST_FILE).read_bytes() == manifest


def test_rank_0_merges_the_entries_of_every_rank(tmp_path):
    files = [RANK0, RANK1, {"__2_0.distcp": b"rank two shard" * 50, "rng/rank_2.bin": b"\x02"}]
    parts = [
        mf.Part(str(_part(tmp_path / f"local{r}", f)), r, world=3, chunks={}, token="t")
        for r, f in enumerate(files)
    ]
    dest = tmp_path / "run" / "checkpoint_00000008"
    for part in reversed(parts):  # ranks 2 and 1, then rank 0, which waits for nothing
        upload.upload(part, pafs.LocalFileSystem(), str(dest), timeout_s=0.0)
    manifest = mf.Manifest.parse((dest / mf.MANIFEST_FILE).read_bytes())
    assert set(manifest.files) == set(RANK0) | set(RANK1) | set(files[2])
    for name, data in {**RANK0, **RANK1, **files[2]}.items():
        manifest.check_file(name, data)


def test_checksums_are_streamed_per_storage_item(tmp_path, monkeypatch):
    data = bytes(range(256)) * 400  # 102,400 bytes: items read in blocks of 7
    (tmp_path / "__0_0.distcp").write_bytes(data)
    monkeypatch.setattr(mf, "READ_BYTES", 7)
    items = [(0, 100), (100, 50_000), (50_100, 52_300), (102_000, 1_000)]  # the last ends early
    entries = mf.describe(tmp_path, ["__0_0.distcp"], {"__0_0.distcp": items})
    assert entries["files"]["__0_0.distcp"] == {"size": len(data), "crc32": mf.crc32(data)}
    assert entries["chunks"]["__0_0.distcp"] == [
        [o, n, mf.crc32(data[o : o + n])] for o, n in items
    ]


def test_one_in_flight_makes_the_next_upload_wait_for_the_previous_one(tmp_path):
    uploads = upload.OneInFlight()
    assert not uploads.busy
    assert uploads.start() < 0.1 and uploads.busy
    local = _part(tmp_path / "local", RANK1)
    may_finish, ran = threading.Event(), []

    def slow_upload(name):
        may_finish.wait(timeout=10)
        ran.append(name)
        return "uploaded"

    wrapped = uploads.wrap(slow_upload, local)
    results = []
    first = threading.Thread(target=lambda: results.append(wrapped("ckpt_1")))
    first.start()
    waited = []
    second = threading.Thread(target=lambda: waited.append(uploads.start()))
    second.start()
    time.sleep(0.3)
    assert second.is_alive() and waited == [] and uploads.busy  # the next one waits
    assert local.exists()  # the upload still needs its local files
    may_finish.set()
    first.join(timeout=10)
    second.join(timeout=10)
    assert results == ["uploaded"] and ran == ["ckpt_1"]
    assert waited and waited[0] >= 0.25  # it waited for the first upload to end
    assert not local.exists()  # the wrapper removed the local part once uploaded
    assert uploads.busy  # the second upload now holds the slot
    other = _part(tmp_path / "other", RANK0)
    uploads.release(other)  # its report failed: the upload never ran
    assert not uploads.busy and not other.exists()
    assert uploads.wait() < 0.1


def test_a_failed_upload_is_tried_again_then_removes_its_local_part_and_frees_the_slot(
    tmp_path,
):
    uploads = upload.OneInFlight()
    uploads.start()
    local = _part(tmp_path / "local", RANK1)
    calls = []

    def failing(*args, **kwargs):
        assert local.exists()  # kept for every try, removed after the last
        calls.append((args, kwargs))
        raise OSError("AWS Error NETWORK_CONNECTION during PutObject")

    with pytest.raises(CheckpointError, match="failed 3 times") as raised:
        uploads.wrap(failing, local, backoff_s=0.0)("a", key="b")
    assert calls == [(("a",), {"key": "b"})] * 3
    # Worded so that Ray Train's own retry (on "AWS Error <code>") does not call it again.
    assert "AWS Error" not in str(raised.value) and "NETWORK_CONNECTION" in str(raised.value)
    assert uploads.error is raised.value
    assert not local.exists() and not uploads.busy
    assert uploads.start() < 0.1  # the next one does not wait


def test_ray_trains_retry_does_not_call_a_failed_upload_again(tmp_path):
    from ray._common.retry import call_with_retry
    from ray.train.v2._internal.constants import AWS_RETRYABLE_TOKENS

    uploads = upload.OneInFlight()
    uploads.start()
    local = _part(tmp_path / "local", RANK1)
    calls = []

    def failing() -> None:
        calls.append(1)
        raise OSError("AWS Error SLOW_DOWN: reduce your request rate")

    wrapped = uploads.wrap(failing, local, backoff_s=0.0)
    with pytest.raises(CheckpointError):  # as Ray Train's _upload_checkpoint calls it
        call_with_retry(wrapped, "upload checkpoint", max_attempts=3, match=AWS_RETRYABLE_TOKENS)
    assert len(calls) == 3  # our three tries, and no second round from Ray


def test_a_part_that_is_gone_is_an_error_not_an_empty_upload(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint files"):
        gone = mf.Part(str(tmp_path / "gone"), rank=0, world=1, chunks={}, token="t")
        upload.upload(gone, pafs.LocalFileSystem(), str(tmp_path / "dest"))


def test_a_checkpoint_error_is_not_tried_again(tmp_path):
    uploads = upload.OneInFlight()
    uploads.start()
    local = _part(tmp_path / "local", RANK1)
    calls = []

    def incomplete() -> None:
        calls.append(1)
        raise CheckpointError("the checkpoint is incomplete")

    with pytest.raises(CheckpointError, match="incomplete"):
        uploads.wrap(incomplete, local, backoff_s=0.0)()
    assert calls == [1] and not uploads.busy


def test_wait_returns_once_the_upload_in_flight_ends(tmp_path):
    uploads = upload.OneInFlight()
    uploads.start()
    local = _part(tmp_path / "local", RANK1)
    wrapped = uploads.wrap(lambda: time.sleep(0.3), local)
    thread = threading.Thread(target=wrapped)
    thread.start()
    try:
        assert uploads.wait() >= 0.2
        assert not uploads.busy  # wait leaves the slot free; start takes it
    finally:
        thread.join(timeout=10)


def test_a_written_checkpoint_uploads_whole_with_its_checksums_and_loads_back(tmp_path):
    from checkpoint_helpers import _batch, _load, _state, _trainer

    from lejepa_ray.config import to_yaml
    from lejepa_ray.train import checkpoint

    a = _trainer()
    a.train_step([_batch(0)])
    local = tmp_path / "local"
    a.sync_buffers()
    part = checkpoint.write(local, a.tensors, _state(a), to_yaml(a.cfg))
    written = _listing(local)
    assert mf.MANIFEST_FILE not in written and len(written) > 2
    assert part.chunks  # the shard files' storage items, checksummed by the upload
    dest = tmp_path / "run" / "checkpoint_00000001"
    upload.upload(part, pafs.LocalFileSystem(), str(dest), timeout_s=5.0, poll_s=0.01)
    stored = _listing(dest)
    assert stored.keys() == written.keys() | {mf.MANIFEST_FILE}
    manifest = mf.Manifest.parse(stored[mf.MANIFEST_FILE])
    assert {name for name, _, _ in manifest.chunks} == set(part.chunks)
    state = _load(dest, _trainer())
    assert state.step == 1
