"""Views made off the trainer's node (``benchmarks/placement.py``): with
``data.node_resource=data_node`` every views task runs on the node that declares it, and the
run trains to its last step; the same run without the setting (the control) has views tasks
elsewhere too, so the check can fail.

The scenario runs in its own process on its own ``ray.cluster_utils.Cluster`` (three nodes,
which the shared test cluster cannot give)."""

from __future__ import annotations

import pytest
from procs import run_benchmark

STEPS = 6


@pytest.mark.slow
def test_every_views_task_runs_on_the_data_node_and_the_run_trains():
    out = run_benchmark("placement", "--steps", str(STEPS), timeout_s=600)
    control, placed = out["control"], out["placed"]
    for run in (control, placed):
        assert run["final_step"] == STEPS, out
        assert run["train_workers_by_node"] == ["trainer"], out
    # Without the setting Ray puts views tasks where CPUs are free, the data node not alone.
    assert set(control["views_tasks_by_node"]) - {"data"}, out
    # With it, every views task that ran, ran on the data node.
    views = placed["views_tasks_by_node"]
    assert set(views) - {"not run (FAILED)"} == {"data"} and views["data"] >= 2, out
