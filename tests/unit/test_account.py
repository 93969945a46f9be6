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
    read = SimpleNamespace(
        operator_name="ReadParquet", output_num_rows=_stat(600), wall_time=_stat(9.0)
    )
    views = SimpleNamespace(
        operator_name="MapBatches(make_views)",
        output_num_rows=_stat(600, count=40),
        task_rows=_stat(600, count=21),
        wall_time=_stat(3.0),
        cpu_time=_stat(2.4),
        input_prep_time=_stat(0.06),
        function_body_time=_stat(2.7),
        output_build_time=None,  # not recorded: left out, not zero
    )
    out = account.operator_account(SimpleNamespace(operators_stats=[read, views]))
    assert out["rows"] == 600 and out["tasks"] == 21
    assert out["wall_ms"] == pytest.approx(5.0) and out["cpu_ms"] == pytest.approx(4.0)
    assert out["input_prep_ms"] == pytest.approx(0.1) and out["udf_ms"] == pytest.approx(4.5)
    assert "output_build_ms" not in out
    assert account.operator_account(SimpleNamespace(operators_stats=[read])) == {}
    views.output_num_rows = _stat(0)  # ran, produced nothing: no per-sample figure
    assert account.operator_account(SimpleNamespace(operators_stats=[views])) == {}


def test_task_spans_keep_only_the_named_tasks_in_start_order():
    events = [
        {"ph": "X", "cat": "task::MapBatches(make_views)", "tid": "w1", "ts": 2e6, "dur": 5e5},
        {"ph": "X", "cat": "task:execute", "tid": "w1", "ts": 2e6, "dur": 5e5},
        {"ph": "X", "cat": "task::SkipCounter.add", "tid": "w0", "ts": 1e6, "dur": 1e3},
        {"ph": "X", "cat": "task::MapBatches(make_views)", "tid": "w2", "ts": 1e6, "dur": 1e6},
        {"ph": "i", "cat": "task::MapBatches(make_views)", "tid": "w2", "ts": 0, "dur": 0},
    ]
    assert account.task_spans(events) == [("w2", 1.0, 2.0), ("w1", 2.0, 2.5)]


def test_slot_account_counts_every_second_of_the_windows_and_the_gaps():
    # Worker a: [0, 2] and [3, 4]; worker b: [1, 3]. Window [0, 5]: idle after 4.
    spans = [("a", 0.0, 2.0), ("b", 1.0, 3.0), ("a", 3.0, 4.0)]
    out = account.slot_account(spans, [(0.0, 5.0)])
    assert out["window_s"] == 5.0
    assert out["occupancy_s"] == {"0": 1.0, "1": 3.0, "2": 1.0}  # one task in [0,1], [2,4]
    assert out["gap_ms"] == pytest.approx(1000.0)  # a's one gap, 2 -> 3
    assert out["tasks"] == 3 and out["task_ms"] == pytest.approx((2.0 + 2.0 + 1.0) / 3 * 1e3)
    # Windows clip the spans and add up; a task counts where it started, whole.
    two = account.slot_account(spans, [(-1.0, 0.5), (1.5, 3.5)])
    assert two["window_s"] == 3.5
    assert two["occupancy_s"] == {"0": 1.0, "1": 2.0, "2": 0.5}
    assert two["tasks"] == 2 and two["task_ms"] == pytest.approx(1500.0)  # a@0 and a@3
    assert two["gap_ms"] == pytest.approx(1000.0)
    # Nothing ran: the window is idle, and there is no mean to give.
    empty = account.slot_account([], [(0.0, 2.0)])
    assert empty["occupancy_s"] == {"0": 2.0}
    assert empty["tasks"] == 0 and empty["task_ms"] is None and empty["gap_ms"] is None


def test_tasks_per_cpu_splits_each_data_cpu_between_that_many_tasks():
    from lejepa_ray.data.config import DataConfig
    from lejepa_ray.data.stream import transform_resources

    two = transform_resources(DataConfig(workers=3, tasks_per_cpu=2))
    assert two["compute"].size == 6 and two["num_cpus"] == pytest.approx(0.5)
    auto = transform_resources(DataConfig(workers=None))  # as many as Ray Data's CPUs allow
    assert auto["compute"] is None and auto["num_cpus"] == 1 and "resources" not in auto


def test_views_tasks_ask_for_a_share_of_the_data_node_resource():
    from lejepa_ray.data.config import NODE_RESOURCE_SHARE, DataConfig
    from lejepa_ray.data.stream import data_node_resources, transform_resources

    cfg = DataConfig(node_resource="data_node")
    assert transform_resources(cfg)["resources"] == {"data_node": NODE_RESOURCE_SHARE}
    assert data_node_resources(cfg) == {"data_node": 1.0}  # a local instance declares it
    assert data_node_resources(DataConfig()) == {}
