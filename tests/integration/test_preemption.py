"""Spot preemptions on a local multi-node cluster (``benchmarks/preemption.py``): one of two
slot nodes is drained with the preemption reason and a deadline, as a spot cloud's notice
reaches Ray, and removed just after the deadline.

- ``notice``: the run asks for notices every step, checkpoints at the notice, resumes on the
  node left from that checkpoint (0 steps recomputed), and grows back when a node returns.
- ``ignored``: the same, with the run not asking: it resumes from its last periodic checkpoint
  and recomputes the steps since.

Both count a preemption, not a worker failure. Each scenario runs on its own
``ray.cluster_utils.Cluster``, in a process of its own (one node per training slot)."""

from __future__ import annotations

import pytest
from procs import run_benchmark

STEPS = {"notice": 80, "ignored": 48}
"""Planned steps. ``notice``: the notice lands some steps after the checkpoint of step 8 (2 s
after it is registered); the group of one must then register a checkpoint before a slot
returns (a grow before would take its steps back), and still be training when the grown group
of two starts (some 20 s later). ``ignored``: the group of two must still be training at the
deadline (its last step before the kill was 32 in the benchmark's run), and steps after."""
EVERY = 8


@pytest.fixture(scope="module")
def scenarios() -> dict:
    def run(name: str, *more: str) -> dict:
        return run_benchmark(
            "preemption",
            *(name, *more),
            *("--steps", str(STEPS[name]), "--every", str(EVERY)),
            # Ray Train retries the old size while the removed node's resources are still
            # counted (its default: 60 s); the benchmark's 15 s, shortened again.
            *("--start-timeout", "8"),
        )

    return {**run("notice", "--return"), **run("ignored")}


def _check_counted_as_a_preemption(run: dict, steps: int) -> dict:
    """What holds with or without the notice: the planned last step, each step logged once,
    the same global batch, one preemption and no worker failure, and a shrink whose cause is
    the preemption."""
    assert run["final_step"] == steps and run["steps_logged_once"], run
    assert run["images_per_step"] == [32], run  # 16 + 16 on two workers, 32 on one
    assert run["counts"]["preemptions"] == 1 and run["counts"]["failures"] == 0, run
    (notice,) = run["notices"]
    assert notice["ranks"] and notice["deadline"] is not None, notice
    shrink = run["resizes"][0]
    assert (shrink["from"], shrink["to"]) == (2, 1), run
    assert shrink["cause"].startswith("shrank after a preemption"), shrink
    assert "1 preemption" in run["summary"] and "0 worker failures" in run["summary"], run
    return notice


@pytest.mark.slow
def test_a_run_that_asks_checkpoints_at_the_notice_and_recomputes_nothing(scenarios):
    run = scenarios["notice"]
    notice = _check_counted_as_a_preemption(run, STEPS["notice"])
    # Saved at the notice, before the deadline, and resumed from exactly there: the old group
    # stopped stepping at that checkpoint, so no step is trained twice.
    assert notice["checkpoint_step"] == run["resumed_from"], run
    assert notice["stored_s"] < notice["deadline"] - notice["time"], notice
    assert run["last_step_before_kill"] == run["resumed_from"], run
    assert run["steps_recomputed"] == 0, run
    assert run["resumed_from"] > EVERY, run  # saved at the notice, after the drain
    assert run["resizes"][0]["cause"] == (
        f"shrank after a preemption (checkpoint after the notice: step {run['resumed_from']})"
    )
    # The group shrank to the node left, then grew back when a slot node returned.
    assert [t["world_size"] for t in run["timeline"]] == [2, 1, 2], run
    grow = run["resizes"][1]
    assert (grow["from"], grow["to"]) == (1, 2), run
    assert grow["cause"] == "grew: slots for 2 workers were free", run
    assert grow["step"] + 1 == run["timeline"][2]["from_step"], run  # from its checkpoint
    # No jump of the loss at either resize beyond the step-to-step noise around it.
    for around in run["loss_around_resize"]:
        assert around["jump"] is not None and around["noise"] is not None, around
        assert around["jump"] <= 2 * around["noise"] + 0.05, around


@pytest.mark.slow
def test_a_run_that_ignores_the_notice_recomputes_up_to_a_checkpoint_interval(scenarios):
    run = scenarios["ignored"]
    _check_counted_as_a_preemption(run, STEPS["ignored"])
    assert run["resumed_from"] % EVERY == 0, run  # its latest periodic checkpoint
    assert 0 < run["steps_recomputed"] <= EVERY, run
    assert [t["world_size"] for t in run["timeline"]] == [2, 1], run
