"""launch/events.py: the run's worker-failure and resize records, and their causes."""

from __future__ import annotations

import json

import pytest

from lejepa_ray.launch import events


def test_records_are_appended_as_json_lines_oldest_first(tmp_path):
    uri = str(tmp_path / "run" / "log.jsonl")
    assert events.read(uri) == []
    events.append(uri, {"a": 1})
    events.append(uri, {"a": 2})
    assert events.read(uri) == [{"a": 1}, {"a": 2}]
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"a": 1}, {"a": 2}]


def test_failure_recorder_keeps_each_ranks_error_type_and_first_line(tmp_path):
    recorder = events.FailureRecorder(str(tmp_path))
    recorder.after_exception(None, {1: RuntimeError("node died\ntraceback..."), 0: KeyError("x")})
    (record,) = events.read(str(tmp_path / events.FAILURES_FILE))
    assert record["ranks"] == [0, 1]
    assert record["errors"] == {"0": "KeyError: 'x'", "1": "RuntimeError: node died"}


@pytest.mark.parametrize(
    ("before", "after", "failed", "cause"),
    [
        (1, 2, False, "grew: slots for 2 workers were free"),
        (2, 1, True, "shrank after a worker failure (ActorDiedError: the actor died)"),
        (2, 1, False, "shrank: slots for only 1 workers were free"),
    ],
)
def test_a_resize_names_its_cause(tmp_path, monkeypatch, before, after, failed, cause):
    clock = iter([100.0, 200.0])
    monkeypatch.setattr(events.time, "time", lambda: next(clock))
    if failed:
        events.FailureRecorder(str(tmp_path)).after_exception(
            None, {1: type("ActorDiedError", (Exception,), {})("the actor died")}
        )
    else:
        next(clock)
    record = events.record_resize(str(tmp_path), 8, before, after)
    assert record == {"time": 200.0, "step": 8, "from": before, "to": after, "cause": cause}
    assert events.read(str(tmp_path / events.RESIZES_FILE)) == [record]


def test_a_failure_before_the_previous_resize_is_not_the_cause_of_the_next(tmp_path, monkeypatch):
    clock = iter([1.0, 2.0, 3.0])
    monkeypatch.setattr(events.time, "time", lambda: next(clock))
    events.FailureRecorder(str(tmp_path)).after_exception(None, {0: OSError("lost")})
    events.record_resize(str(tmp_path), 4, 2, 1)  # caused by that failure
    later = events.record_resize(str(tmp_path), 8, 2, 1)
    assert later["cause"] == "shrank: slots for only 1 workers were free"
