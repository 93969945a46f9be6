"""lejepa_ray.data.account: the views operator's figures read from a stats summary, the
slot occupancy and gaps computed from task spans of a timeline; and the sizing of the views
tasks that the account measures (``stream.transform_resources``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lejepa_ray.data import account


def _stat(total: float, count: int = 1) -> SimpleNamespace:
    return SimpleNamespace(sum=total, count=count)


def test_operator_account_is_per_sample_and_picks_the_views_operator():
    read = SimpleNamespace(operator_name="ReadParquet", wall_time=_stat(9.0), task_rows=None)
    views = SimpleNamespace(
        operator_name="MapBatches(make_views)",
        task_rows=_stat(600, count=21),
        wall_time=_stat(3.0),
        cpu_time=_stat(2.4),
        input_prep_time=_stat(0.06),
        function_body_time=_stat(2.7),
        output_build_time=None,  # not recorded: left out, not zero
    )
    out = account.operator_account(SimpleNamespace(operators_stats=[read, views]), samples=600)
    assert out["tasks"] == 21
    assert out["wall_ms"] == pytest.approx(5.0) and out["cpu_ms"] == pytest.approx(4.0)
    assert out["input_prep_ms"] == pytest.approx(0.1) and out["udf_ms"] == pytest.approx(4.5)
    assert "output_build_ms" not in out
    assert account.operator_account(SimpleNamespace(operators_stats=[read]), 600) == {}


def test_task_spans_keep_only_the_named_tasks_in_start_order():
    events = [
        {"ph": "X", "cat": "task::MapBatches(make_views)", "tid": "w1", "ts": 2e6, "dur": 5e5},
        {"ph": "X", "cat": "task:execute", "tid": "w1", "ts": 2e6, "dur": 5e5},
        {"ph": "X", "cat": "task::SkipCounter.add", "tid": "w0", "ts": 1e6, "dur": 1e3},
        {"ph": "X", "cat": "task::MapBatches(make_views)", "tid": "w2", "ts": 1e6, "dur": 1e6},
        {"ph": "i", "cat": "task::MapBatches(make_views)", "tid": "w2", "ts": 0, "dur": 0},
    ]
    assert account.task_spans(events) == [("w2", 1.0, 2.0), ("w1", 2.0, 2.5)]


def test_slot_account_counts_time_at_each_concurrency_and_the_gaps():
    # Worker a: [0, 2] and [3, 4]; worker b: [1, 3]. Window [0, 5].
    spans = [("a", 0.0, 2.0), ("b", 1.0, 3.0), ("a", 3.0, 4.0)]
    out = account.slot_account(spans, 0.0, 5.0)
    assert out["occupancy_s"] == {1: 3.0, 2: 1.0}  # one task in [0,1], [2,3], [3,4]
    assert out["gap_ms"] == pytest.approx(1000.0)  # a's one gap, 2 -> 3
    assert out["task_ms"] == pytest.approx((2.0 + 2.0 + 1.0) / 3 * 1e3)
    # A window clips the spans, and counts only the tasks that started inside it.
    clipped = account.slot_account(spans, 1.5, 3.5)
    assert clipped["occupancy_s"] == {1: 1.5, 2: 0.5}
    assert clipped["tasks"] == 1 and clipped["task_ms"] == pytest.approx(1000.0)  # whole task


def test_tasks_per_cpu_splits_each_data_cpu_between_that_many_tasks():
    from lejepa_ray.data.config import DataConfig
    from lejepa_ray.data.stream import transform_resources

    two = transform_resources(DataConfig(workers=3, tasks_per_cpu=2))
    assert two["compute"].size == 6 and two["num_cpus"] == pytest.approx(0.5)
    auto = transform_resources(DataConfig(workers=None))  # as many as Ray Data's CPUs allow
    assert auto["compute"] is None and auto["num_cpus"] == 1
