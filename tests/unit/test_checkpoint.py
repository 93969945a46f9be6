"""Sharded checkpoints: exact round trips, resharding across world sizes and strategies, and
clear errors for incomplete, corrupt, foreign or malicious files.

Multi-process, Ray and slow tests: ``tests/integration/test_checkpoint.py``."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
from checkpoint_helpers import (
    _assert_bitwise,
    _batch,
    _config,
    _load,
    _save,
    _tensors,
    _trainer,
)

from lejepa_ray import runs
from lejepa_ray.model.encoder import LeJEPAEncoder, resolve_backbone
from lejepa_ray.train import checkpoint, checkpoint_read
from lejepa_ray.train.checkpoint import CheckpointError


def test_resume_is_bitwise_and_continues_step_schedule_and_rng(tmp_path):
    a = _trainer()
    for i in range(4):
        a.train_step([_batch(i)])
    a.skipped_steps = 1
    _save(a, tmp_path / "ckpt", data_epoch=3, data_samples=48)
    rng_at_save = torch.rand(4)

    torch.manual_seed(1234)  # a different initialization and RNG stream, as a new process has
    b = _trainer("seed=7")
    state = _load(tmp_path / "ckpt", b)
    assert (state.step, state.data_epoch, state.data_samples) == (4, 3, 48)
    assert (b.step, b.skipped_steps) == (4, 1)
    assert b.optimizer.param_groups[0]["lr"] == a.optimizer.param_groups[0]["lr"]
    assert torch.equal(torch.rand(4), rng_at_save)
    _assert_bitwise(_tensors(b), _tensors(a))
    # Both continue identically: the resumed run is the uninterrupted one.
    for i in range(4, 7):
        ra, rb = a.train_step([_batch(i)]), b.train_step([_batch(i)])
        assert torch.equal(ra.loss.stack(), rb.loss.stack())
        assert a.scheduler.get_last_lr() == b.scheduler.get_last_lr()
    _assert_bitwise(_tensors(b), _tensors(a))


def test_files_are_unique_per_rank_and_hold_no_pickled_objects(tmp_path):
    a = _trainer()
    a.train_step([_batch(0)])
    _save(a, tmp_path / "ckpt")
    names = sorted(
        p.relative_to(tmp_path / "ckpt").as_posix()
        for p in (tmp_path / "ckpt").rglob("*")
        if p.is_file()
    )
    assert names == [
        ".metadata",
        "__0_0.distcp",
        "config.yaml",
        "manifest.json",
        "rng/rank_00000.json",
        "state.json",
    ]
    metadata = checkpoint_read.read_metadata(tmp_path / "ckpt")
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    assert all(isinstance(v, TensorStorageMetadata) for v in metadata.state_dict_metadata.values())
    assert json.loads((tmp_path / "ckpt/state.json").read_text())["step"] == 1


@pytest.fixture
def saved(tmp_path) -> Path:
    a = _trainer()
    a.train_step([_batch(0)])
    _save(a, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_another_model_is_refused_with_both_names(saved):
    other = _trainer("model.name=resnet34")
    with pytest.raises(
        CheckpointError,
        match=r"cannot load a test_resnet checkpoint .* into "
        r"resnet34: [1-9]\d* tensors missing",
    ):
        _load(saved, other)
    wider = _trainer("model.projector_dim=32")
    with pytest.raises(CheckpointError, match=r"of a different shape \(model\.projector"):
        _load(saved, wider)


@pytest.fixture
def legacy(saved) -> Path:
    """A checkpoint as lejepa-ray wrote them before manifests: checked by structure only."""
    (saved / "manifest.json").unlink()
    return saved


def _encoder() -> LeJEPAEncoder:
    return LeJEPAEncoder(resolve_backbone(_config()), _config().model)


def test_manifest_lists_every_file_and_a_checksum_per_stored_tensor(saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    on_disk = {
        p.relative_to(saved).as_posix(): p.stat().st_size
        for p in saved.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    assert {k: v["size"] for k, v in manifest["files"].items()} == on_disk
    index = checkpoint_read.read_metadata(saved).storage_data
    ranges = {(i.relative_path, i.offset, i.length) for i in index.values()}
    assert {(f, o, n) for f, items in manifest["chunks"].items() for o, n, _ in items} == ranges


def test_truncated_shard_is_refused_by_name_before_loading(saved):
    shard = saved / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(
        CheckpointError, match=r"__0_0.distcp has 1000 bytes, the manifest says \d+ \(truncated\)"
    ):
        _load(saved, _trainer())


def test_a_flipped_payload_byte_is_caught_where_it_is_read(saved):
    index = checkpoint_read.read_metadata(saved).storage_data
    key = next(k for k in index if k.fqn.startswith("model.") and index[k].length > 4096)
    item = index[key]
    shard = saved / item.relative_path
    data = bytearray(shard.read_bytes())
    data[item.offset + item.length // 2] ^= 0x01  # one bit, deep in a tensor's payload
    shard.write_bytes(bytes(data))
    message = rf"{item.relative_path} bytes {item.offset}\+{item.length} do not match"
    with pytest.raises(CheckpointError, match=message):
        _load(saved, _trainer())
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load_model_weights(saved, _encoder())


def test_a_missing_file_is_refused_by_name(saved):
    (saved / "rng" / "rank_00000.json").unlink()
    with pytest.raises(CheckpointError, match=r"rng/rank_00000.json is missing"):
        _load(saved, _trainer())


def test_a_checkpoint_without_manifest_loads_with_a_warning(legacy, caplog):
    with caplog.at_level(logging.WARNING, logger="lejepa_ray.train.checkpoint_read"):
        assert checkpoint.load_model_weights(legacy, _encoder()) == 1
    assert "has no manifest.json" in caplog.text
    assert "checked by structure and size only" in caplog.text


def test_legacy_truncated_or_missing_shard_is_reported_before_loading(legacy):
    shard = legacy / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"__0_0.distcp has 1000 of \d+ bytes"):
        _load(legacy, _trainer())
    shard.unlink()
    with pytest.raises(CheckpointError, match=r"__0_0.distcp is missing"):
        checkpoint.load_model_weights(legacy, _encoder())


def test_legacy_garbled_shard_bytes_give_a_checkpoint_error(legacy):
    shard = legacy / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[:64] = b"\0" * 64  # same length, so only reading it can tell
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"a shard file is corrupt \(.*UnpicklingError"):
        _load(legacy, _trainer())


def test_corrupt_state_or_index_and_interrupted_writes(legacy):
    (legacy / ".metadata").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match=r"\.metadata is corrupt"):
        _load(legacy, _trainer())
    (legacy / ".metadata").unlink()
    with pytest.raises(CheckpointError, match=r"no \.metadata: .* The checkpoint is incomplete"):
        _load(legacy, _trainer())
    (legacy / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"state.json is corrupt"):
        checkpoint.read_state(legacy)
    (legacy / "state.json").unlink()
    with pytest.raises(CheckpointError, match=r"interrupted while being written"):
        checkpoint.read_state(legacy)


def test_an_overwritten_state_file_is_caught_by_its_checksum(saved):
    state = saved / "state.json"
    text = state.read_text()
    state.write_text(text.replace('"step": 1', '"step": 7'))  # same length
    with pytest.raises(CheckpointError, match=r"state.json does not match its checksum"):
        checkpoint.read_state(saved)


class _Payload:
    """Unpickling this would run a command; the loader must refuse it, not run it."""

    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_index_with_foreign_objects_is_refused_without_running_them(legacy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (legacy / ".metadata").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(CheckpointError, match=r"refused to load posix\.system"):
        _load(legacy, _trainer())
    assert not (tmp_path / "pwned").exists()


def test_find_accepts_a_checkpoint_and_rejects_a_folder_without_one(saved, tmp_path):
    assert runs.find(saved) == str(saved)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"holds no completed checkpoint"):
        runs.find(tmp_path / "empty")
    with pytest.raises(CheckpointError, match=r"does not exist"):
        runs.find(tmp_path / "nowhere")


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_pickled_entry_where_a_tensor_belongs_is_refused_unread(tmp_path):
    import torch.distributed.checkpoint as dcp

    cfg = _config()
    encoder = LeJEPAEncoder(resolve_backbone(cfg), cfg.model)
    state = {"model": dict(encoder.state_dict())}
    state["model"]["projector.0.weight"] = ["not", "a", "tensor"]  # DCP pickles this
    dcp.save(state, checkpoint_id=str(tmp_path / "foreign"), no_dist=True)
    (tmp_path / "foreign" / "state.json").write_text('{"step": 3}')
    with pytest.raises(
        CheckpointError,
        match=r"pickled objects where tensors belong "
        r"\(model\.projector\.0\.weight\)",
    ):
        checkpoint.load_model_weights(tmp_path / "foreign", encoder)
