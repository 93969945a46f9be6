"""launch/events.py: the run's worker-failure, preemption and resize records, and their causes."""

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


def _preempted_death(wrapped: bool = True) -> Exception:
    """A worker's death on a node drained for preemption, as Ray Train hands it to callbacks:
    a health-check failure wrapping the actor's death, whose node died of a preemption."""
    from ray.core.generated.common_pb2 import ActorDiedErrorContext, NodeDeathInfo
    from ray.exceptions import ActorDiedError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    context = ActorDiedErrorContext(
        class_name="RayTrainWorker",
        actor_id=b"\x01" * 16,
        error_message="The node was drained",
        node_death_info=NodeDeathInfo(reason=NodeDeathInfo.AUTOSCALER_DRAIN_PREEMPTED),
    )
    death = ActorDiedError(context)
    assert death.preempted
    return WorkerHealthCheckFailedError("Worker health check failed.", death) if wrapped else death


def _fail(run_dir, **errors: Exception) -> None:
    events.FailureRecorder(str(run_dir)).after_exception(
        None, {int(rank[1:]): e for rank, e in errors.items()}
    )


class _Clock:
    """``events.time.time``, set by the test: ``clock.now = 130.0``."""

    def __init__(self, monkeypatch, now: float = 0.0):
        self.now = now
        monkeypatch.setattr(events.time, "time", lambda: self.now)


@pytest.mark.parametrize("wrapped", [True, False])
def test_a_preempted_workers_death_is_flagged_and_not_counted_as_a_failure(
    tmp_path, monkeypatch, wrapped
):
    _Clock(monkeypatch, 100.0)
    # The survivor's collateral error comes in the same poll: the preemption still wins.
    _fail(tmp_path, r1=_preempted_death(wrapped), r0=RuntimeError("NCCL aborted"))
    (record,) = events.read(str(tmp_path / events.FAILURES_FILE))
    assert record["preempted"] is True and record["ranks"] == [0, 1]
    assert record["errors"]["1"].startswith(
        "WorkerHealthCheckFailedError: " if wrapped else "ActorDiedError: "
    )
    assert events.counts(str(tmp_path)) == {"failures": 0, "preemptions": 1, "resizes": 0}


def test_other_deaths_are_not_flagged_and_count_as_failures(tmp_path, monkeypatch):
    from ray.exceptions import RayActorError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    clock = _Clock(monkeypatch, 100.0)
    _fail(tmp_path, r0=WorkerHealthCheckFailedError("Worker health check failed.", RayActorError()))
    clock.now = 200.0
    _fail(tmp_path, r1=OSError("disk full"))
    records = events.read(str(tmp_path / events.FAILURES_FILE))
    assert [r.get("preempted") for r in records] == [None, None]
    assert events.counts(str(tmp_path)) == {"failures": 2, "preemptions": 0, "resizes": 0}


def _preempting(deadline_ms: int | None = 190_000, **node_ranks: list[int]):
    """Ray Train's controller state while it waits out a preemption of ``node_ranks``'s nodes."""
    from ray.train.v2._internal.execution.controller.state import PreemptingState
    from ray.train.v2.api.preemption import PreemptionInfo

    info = PreemptionInfo(
        deadline_ms=deadline_ms, preempted_node_to_ranks=node_ranks or {"n1": [1]}
    )
    return PreemptingState(preemption_info=info, detected_at_s=0.0)


def _running():
    from ray.train.v2._internal.execution.controller.state import RunningState

    return RunningState()


def _report(recorder, step: int, checkpoint: bool = True, workers: int = 2) -> None:
    """All workers reported ``step`` (with a checkpoint or not): Ray Train's call, as its report
    handler makes it."""
    from ray.train import Checkpoint
    from ray.train.v2._internal.execution.training_report import _TrainingReport

    metrics = [{"step": step, "loss": 0.5} for _ in range(workers)]
    saved = Checkpoint(f"/tmp/run/checkpoint_{step:08d}") if checkpoint else None
    report = _TrainingReport(checkpoint=saved, metrics=metrics[0], validation=False)
    recorder.after_report(training_report=report, metrics=metrics)


def _notice(recorder, deadline_ms: int | None = 190_000, **node_ranks: list[int]) -> None:
    """Ray Train starts waiting out a preemption (a poll of its running group saw the notice)."""
    recorder.after_controller_state_update(_running(), _preempting(deadline_ms, **node_ranks))


def _preemptions(run_dir) -> list[dict]:
    return events.read(f"{run_dir}/{events.PREEMPTIONS_FILE}")


def test_the_preemption_recorder_is_a_ray_train_controller_and_report_callback():
    import inspect
    import pickle

    from ray.train.v2._internal.execution.callback import ControllerCallback, ReportCallback

    recorder = events.PreemptionRecorder("/run")
    hooks = {"after_controller_state_update": ControllerCallback, "after_report": ReportCallback}
    for hook, base in hooks.items():
        assert isinstance(recorder, base)
        ours, rays = getattr(events.PreemptionRecorder, hook), getattr(base, hook)
        assert ours is not rays
        assert (
            inspect.signature(ours).parameters.keys() == inspect.signature(rays).parameters.keys()
        )
    # Ray ships it to the controller's process.
    assert vars(pickle.loads(pickle.dumps(recorder))) == {"run_dir": "/run", "current": None}


def test_a_preemption_is_recorded_once_when_ray_train_starts_waiting_it_out(tmp_path, monkeypatch):
    recorder = events.PreemptionRecorder(str(tmp_path))
    clock = _Clock(monkeypatch, 50.0)
    recorder.after_controller_state_update(_running(), _running())  # no preemption: no line
    assert _preemptions(tmp_path) == []
    clock.now = 100.0
    running, preempting = _running(), _preempting(190_500, n2=[3], n1=[1, 0])
    recorder.after_controller_state_update(running, preempting)
    expected = {
        "time": 100.0,
        "deadline": 190.5,
        "nodes": ["n1", "n2"],
        "ranks": [0, 1, 3],
        "checkpoint_step": None,  # none registered after the notice yet
        "stored_s": None,
    }
    assert _preemptions(tmp_path) == [expected]
    # Each poll while Ray waits it out moves the controller from a preempting state to another
    # (its info merged with any later notice): the same preemption, no new line.
    clock.now = 102.0
    recorder.after_controller_state_update(preempting, _preempting(190_500, n1=[0, 1], n3=[4]))
    assert _preemptions(tmp_path) == [expected]


def test_a_preemption_without_a_deadline_is_recorded_with_none(tmp_path, monkeypatch):
    _Clock(monkeypatch, 100.0)
    _notice(events.PreemptionRecorder(str(tmp_path)), deadline_ms=None, n1=[1])
    (record,) = _preemptions(tmp_path)
    assert record["deadline"] is None and record["ranks"] == [1]


def test_the_last_checkpoint_before_the_restart_completes_the_preemptions_record(
    tmp_path, monkeypatch
):
    recorder = events.PreemptionRecorder(str(tmp_path))
    clock = _Clock(monkeypatch, 10.0)
    _notice(recorder, n0=[0])
    (earlier,) = _preemptions(tmp_path)
    recorder.after_controller_state_update(_preempting(), _running())  # restarted
    clock.now = 100.0
    _notice(recorder, n1=[1])
    clock.now = 103.5
    _report(recorder, 41, checkpoint=False)  # a report without a checkpoint: nothing changes
    assert [r["checkpoint_step"] for r in _preemptions(tmp_path)] == [None, None]
    clock.now = 110.25
    _report(recorder, 42)
    (_, record) = _preemptions(tmp_path)
    assert (record["checkpoint_step"], record["stored_s"]) == (42, 10.25)
    clock.now = 115.0
    _report(recorder, 43)  # a later one, still before the restart: the run resumes from it
    records = _preemptions(tmp_path)
    # Only the current preemption's line changes; the earlier one never got a checkpoint.
    assert records == [earlier, {**record, "checkpoint_step": 43, "stored_s": 15.0}]


def test_a_checkpoint_outside_a_preemption_completes_no_record(tmp_path, monkeypatch):
    recorder = events.PreemptionRecorder(str(tmp_path))
    clock = _Clock(monkeypatch, 10.0)
    _report(recorder, 8)  # before any preemption: no file
    assert _preemptions(tmp_path) == []
    clock.now = 100.0
    _notice(recorder, n1=[1])
    recorder.after_controller_state_update(_preempting(), _running())  # the group restarted
    clock.now = 300.0
    _report(recorder, 50)  # the new group's checkpoint: not the preemption's
    (record,) = _preemptions(tmp_path)
    assert (record["checkpoint_step"], record["stored_s"]) == (None, None)


def test_leaving_the_preempting_state_ends_the_preemption_and_the_next_is_another(
    tmp_path, monkeypatch
):
    recorder = events.PreemptionRecorder(str(tmp_path))
    clock = _Clock(monkeypatch, 100.0)
    _notice(recorder, n1=[1])
    clock.now = 120.0
    _report(recorder, 42)
    recorder.after_controller_state_update(_preempting(), _running())
    clock.now = 500.0
    _notice(recorder, n1=[1])  # the same node again, once more: a second preemption
    clock.now = 530.0
    _report(recorder, 90)
    records = _preemptions(tmp_path)
    assert [(r["time"], r["checkpoint_step"], r["stored_s"]) for r in records] == [
        (100.0, 42, 20.0),
        (500.0, 90, 30.0),
    ]


def test_ray_re_reporting_the_same_preempted_deaths_adds_no_line(tmp_path, monkeypatch):
    # One recorder, as in Ray Train's controller: the dead workers come back at every poll
    # while it waits out the preemption.
    recorder = events.FailureRecorder(str(tmp_path))
    clock = _Clock(monkeypatch, 100.0)
    for now in (100.0, 102.0, 104.0):
        clock.now = now
        recorder.after_exception(None, {1: _preempted_death()})
    clock.now = 106.0
    recorder.after_exception(None, {1: _preempted_death(), 2: _preempted_death()})  # one more
    records = events.read(str(tmp_path / events.FAILURES_FILE))
    assert [(r["time"], r["ranks"], r.get("preempted")) for r in records] == [
        (100.0, [1], True),
        (106.0, [1, 2], True),
    ]


def test_a_repeated_failure_that_is_no_preemption_is_recorded_each_time(tmp_path, monkeypatch):
    recorder = events.FailureRecorder(str(tmp_path))
    clock = _Clock(monkeypatch, 100.0)
    recorder.after_exception(None, {1: _preempted_death()})
    for now in (200.0, 300.0):  # the same error of the same rank, twice: two failures
        clock.now = now
        recorder.after_exception(None, {1: OSError("disk full")})
    records = events.read(str(tmp_path / events.FAILURES_FILE))
    assert [(r["time"], r.get("preempted")) for r in records] == [
        (100.0, True),
        (200.0, None),
        (300.0, None),
    ]
    assert events.counts(str(tmp_path))["failures"] == 2


def test_the_same_rank_preempted_again_later_is_another_line(tmp_path, monkeypatch):
    # A preempted death's first line is Ray's generic "Worker health check failed.": a rank
    # preempted twice in a run (spot nodes are) reports the same line twice.
    recorder = events.FailureRecorder(str(tmp_path))
    clock = _Clock(monkeypatch, 100.0)
    recorder.after_exception(None, {1: _preempted_death()})
    clock.now = 100.0 + 86_400.0  # a day later, another node of the group reclaimed
    recorder.after_exception(None, {1: _preempted_death()})
    records = events.read(str(tmp_path / events.FAILURES_FILE))
    assert [r["time"] for r in records] == [100.0, 86_500.0]
    assert events.counts(str(tmp_path))["preemptions"] == 2


def test_a_notice_and_the_death_it_announced_are_one_preemption(tmp_path, monkeypatch):
    run = str(tmp_path)
    clock = _Clock(monkeypatch, 100.0)
    _notice(events.PreemptionRecorder(run), n1=[1])
    clock.now = 195.0
    _fail(tmp_path, r1=_preempted_death())
    assert events.counts(run) == {"failures": 0, "preemptions": 1, "resizes": 0}
    clock.now = 100.0 + events.NOTICE_COVERS_S  # still the notice's
    _fail(tmp_path, r2=_preempted_death())
    assert events.counts(run) == {"failures": 0, "preemptions": 1, "resizes": 0}
    # A preempted death later than the notice covers is another preemption, unannounced.
    clock.now = 100.0 + events.NOTICE_COVERS_S + 1
    _fail(tmp_path, r1=_preempted_death())
    assert events.counts(run) == {"failures": 0, "preemptions": 2, "resizes": 0}


def test_a_preempted_death_before_any_notice_is_an_unannounced_preemption(tmp_path, monkeypatch):
    run = str(tmp_path)
    clock = _Clock(monkeypatch, 100.0)
    _fail(tmp_path, r0=_preempted_death())  # before the notice: not the notice's
    clock.now = 400.0
    _notice(events.PreemptionRecorder(run), n1=[1])
    assert events.counts(run) == {"failures": 0, "preemptions": 2, "resizes": 0}


HISTORIES = {
    # what happened since the previous resize, in order -> the cause of the shrink after it
    "notice, checkpoint": "shrank after a preemption (checkpoint after the notice: step 42)",
    "notice": "shrank after a preemption (no checkpoint between the notice and the deadline)",
    "unannounced": "shrank after a preemption (no notice before the node went)",
    "failure": "shrank after a worker failure (OSError: disk full)",
    # The latest event wins: a notice that a failure followed...
    "notice, checkpoint, failure": "shrank after a worker failure (OSError: disk full)",
    # ... and a failure that a notice followed.
    "failure, notice, checkpoint": "shrank after a preemption (checkpoint after the notice: "
    "step 42)",
    "unannounced, failure": "shrank after a worker failure (OSError: disk full)",
    "failure, unannounced": "shrank after a preemption (no notice before the node went)",
    "old notice": "shrank: slots for only 1 workers were free",
    "old notice, failure": "shrank after a worker failure (OSError: disk full)",
    "old failure": "shrank: slots for only 1 workers were free",
}


def _happen(run: str, clock: _Clock, history: str) -> None:
    """Play ``history`` (HISTORIES' keys) from t=10: an "old" event before a resize at 100,
    then the others at 150, 200, ...; one recorder of each kind, as in the controller."""
    failures, preemptions = events.FailureRecorder(run), events.PreemptionRecorder(run)
    clock.now = 10.0
    for event in history.split(", "):
        if event.startswith("old "):
            event = event[4:]
        elif clock.now < 150.0:
            events.record_resize(run, 4, 1, 2)  # grew at 10: what came before is not a cause
            clock.now = 150.0
        if event == "notice":
            _notice(preemptions, n1=[1])
        elif event == "checkpoint":
            _report(preemptions, 42)
            preemptions.after_controller_state_update(_preempting(), _running())  # restarted
        elif event == "unannounced":
            preemptions.after_controller_state_update(_running(), _running())
            failures.after_exception(None, {1: _preempted_death()})
        elif event == "failure":
            preemptions.after_controller_state_update(_preempting(), _running())
            failures.after_exception(None, {1: OSError("disk full\nmore")})
        clock.now += 50.0
    if clock.now < 150.0:
        events.record_resize(run, 4, 1, 2)
    clock.now = 1000.0


@pytest.mark.parametrize(("history", "cause"), HISTORIES.items(), ids=list(HISTORIES))
def test_a_shrink_names_the_latest_preemption_or_failure_before_it(
    tmp_path, monkeypatch, history, cause
):
    run = str(tmp_path)
    _happen(run, _Clock(monkeypatch), history)
    record = events.record_resize(run, 42, 2, 1)
    assert (record["time"], record["from"], record["to"], record["cause"]) == (1000.0, 2, 1, cause)
    assert events.read(f"{run}/{events.RESIZES_FILE}")[-1] == record


@pytest.mark.parametrize("history", ["notice", "unannounced", "notice, checkpoint", "failure"])
def test_a_resize_keeps_the_step_it_resumed_at_whatever_its_cause(tmp_path, monkeypatch, history):
    # No checkpoint after the notice (or no notice): the group resumes at an earlier one.
    run = str(tmp_path)
    _happen(run, _Clock(monkeypatch), history)
    assert events.record_resize(run, 40, 2, 1)["step"] == 40


def test_a_shrink_after_a_notice_and_the_death_it_announced_names_the_notice(tmp_path, monkeypatch):
    # Ray Train reports the preempted worker's death to the callbacks while it waits out the
    # notice's deadline: the death comes after the notice it was announced by.
    run = str(tmp_path)
    clock = _Clock(monkeypatch, 100.0)
    preemptions = events.PreemptionRecorder(run)
    _notice(preemptions, n1=[1])
    clock.now = 110.0
    _report(preemptions, 42)
    clock.now = 190.0
    events.FailureRecorder(run).after_exception(None, {1: _preempted_death()})
    preemptions.after_controller_state_update(_preempting(), _running())
    clock.now = 300.0
    record = events.record_resize(run, 42, 2, 1)
    assert record["cause"] == "shrank after a preemption (checkpoint after the notice: step 42)"


def test_the_summary_is_none_without_events_and_counts_each_kind(tmp_path, monkeypatch):
    run = str(tmp_path)
    assert events.summary(run) is None
    preemptions = events.PreemptionRecorder(run)
    clock = _Clock(monkeypatch, 120.0)
    _notice(preemptions, n1=[1])
    clock.now = 130.0
    _report(preemptions, 42)
    clock.now = 140.0
    _fail(tmp_path, r1=_preempted_death())  # the notice's
    preemptions.after_controller_state_update(_preempting(), _running())
    clock.now = 150.0
    _fail(tmp_path, r0=OSError("disk full"))
    clock.now = 1000.0
    _notice(preemptions, n2=[0])  # no checkpoint before the restart
    preemptions.after_controller_state_update(_preempting(), _running())
    clock.now = 2000.0
    _fail(tmp_path, r1=_preempted_death())  # long after both notices: unannounced
    clock.now = 2100.0
    events.record_resize(run, 42, 2, 1)
    line = events.summary(run)
    assert line.startswith(
        "3 preemptions (checkpoint after the notice: step 42, none), "
        "1 worker failure (fault.max_failures counts only these), 1 resize; "
    )
    for name in (events.PREEMPTIONS_FILE, events.FAILURES_FILE, events.RESIZES_FILE):
        assert name in line


def test_the_summary_of_a_run_with_failures_only(tmp_path, monkeypatch):
    clock = _Clock(monkeypatch, 1.0)
    _fail(tmp_path, r0=OSError("a"))
    clock.now = 2.0
    _fail(tmp_path, r0=OSError("b"))
    line = events.summary(str(tmp_path))
    assert line.startswith("0 preemptions, 2 worker failures (fault.max_failures counts only")
    assert "0 resizes" in line and "checkpoint" not in line
