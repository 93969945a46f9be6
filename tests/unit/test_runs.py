"""Reading the checkpoints Ray Train registered for a run directory (no Ray started)."""

from __future__ import annotations

import json
import types

import pytest

import lejepa_ray.runs as runs
from lejepa_ray.compat import snapshot_read_error
from lejepa_ray.errors import CheckpointError

SNAPSHOT = "checkpoint_manager_snapshot.json"


def test_a_run_that_never_checkpointed_has_no_registered_checkpoints(tmp_path):
    assert runs.registered(str(tmp_path)) == []


def test_a_snapshot_that_never_parses_is_a_checkpoint_error_after_every_read(tmp_path, monkeypatch):
    # Ray's own reader on a really half-written snapshot: the error compat names is the one
    # it raises.
    (tmp_path / SNAPSHOT).write_text('{"ray_version": "2.60.0", "checkpoint_results": [{"chec')
    waits: list[float] = []
    monkeypatch.setattr(runs.time, "sleep", waits.append)
    with pytest.raises(CheckpointError, match="does not parse") as e:
        runs.registered(str(tmp_path))
    assert isinstance(e.value.__cause__, snapshot_read_error())
    assert len(waits) == runs.SNAPSHOT_READS - 1


def test_a_snapshot_that_parses_but_is_refused_is_not_read_again(tmp_path, monkeypatch):
    # Ray refuses, e.g., a snapshot of another Ray version: not a half-written file.
    (tmp_path / SNAPSHOT).write_text('{"ray_version": "0.0.1", "checkpoint_results": []}')
    waits: list[float] = []
    monkeypatch.setattr(runs.time, "sleep", waits.append)
    with pytest.raises(snapshot_read_error()):
        runs.registered(str(tmp_path))
    assert waits == []


def test_a_snapshot_caught_half_written_is_read_again(tmp_path, monkeypatch):
    from ray.train import Result

    reads: list[str] = []

    def from_path(path: str):
        reads.append(path)
        if len(reads) == 1:
            try:
                json.loads('{"a": 1 "b"}')
            except json.JSONDecodeError as e:
                raise snapshot_read_error()("Expecting ',' delimiter") from e
        return types.SimpleNamespace(best_checkpoints=[], checkpoint=None)

    monkeypatch.setattr(Result, "from_path", staticmethod(from_path))
    monkeypatch.setattr(runs.time, "sleep", lambda s: None)
    assert runs.registered(str(tmp_path)) == []
    assert reads == [str(tmp_path.resolve())] * 2
