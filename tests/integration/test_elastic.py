"""Elastic worker groups on a local multi-node cluster (``benchmarks/elastic.py``): a run of 2
that loses a node (its processes killed, its slot gone) goes on with 1 instead of waiting.
A group that grows back when a slot node joins is tested with a preemption, in
test_preemption.py (``benchmarks/elastic.py grow`` runs growth alone).

Each scenario runs in its own process, on its own ``ray.cluster_utils.Cluster``: one node per
training slot, which the shared test cluster cannot give."""

from __future__ import annotations

import pytest
from procs import run_benchmark

STEPS = 32
"""Enough steps on either side of the node's removal (2 s after the checkpoint of step 4 is
registered, some steps later) to compare the loss around the resize; one CPU worker steps at
about 0.5 s."""


@pytest.fixture(scope="module")
def scenarios() -> dict:
    return run_benchmark(
        "elastic",
        *("shrink", "--steps", str(STEPS), "--every", "4"),
        # Ray's 60 s retry at the old size after a lost node, shortened (docs/training.md).
        *("--start-timeout", "8"),
        # Ray Train's controller takes one report per poll (2 s by default, which would hold
        # this run, reporting every step, to a step per 2 s): the poll the other tests use.
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5",
    )


def _check_resize(run: dict, before: int, after: int) -> dict:
    """What holds for any resize: the planned last step, once each, the same global batch, one
    change of world size after the first checkpoint, and no jump of the loss beyond noise."""
    assert run["final_step"] == STEPS and run["steps_logged_once"], run
    # Counted on every rank: the global batch, 33 on one worker and 17 + 16 on two.
    assert run["images_per_step"] == [33], run
    (first, second) = run["timeline"]
    assert (first["world_size"], first["from_step"]) == (before, 1), run
    assert second["world_size"] == after and second["from_step"] > 4, run
    (resize,) = run["resizes"]
    assert (resize["from"], resize["to"]) == (before, after), run
    assert resize["step"] + 1 == second["from_step"], run  # resumed at its checkpoint
    (around,) = run["loss_around_resize"]
    assert around["jump"] is not None and around["noise"] is not None, around  # steps logged
    assert around["jump"] <= 2 * around["noise"] + 0.05, around
    return resize


@pytest.mark.slow
def test_a_group_that_loses_a_node_goes_on_with_the_workers_left(scenarios):
    resize = _check_resize(scenarios["shrink"], 2, 1)
    assert resize["cause"].startswith("shrank after a worker failure"), resize
    assert scenarios["shrink"]["worker_failures"] >= 1
