"""Spot preemptions on a local multi-node Ray cluster: a checkpoint at the notice, or none.

The cluster and run are ``benchmarks/elastic.py``'s: each training slot a node of its own (one
logical CPU, one ``trainer_slot``), the CPU quickstart elastic over ``[1, 2]`` workers with
16 images per worker (a global batch of 32), logging every step. Two slots at the start.
``--delay`` s after the checkpoint of step ``--every`` is registered, one slot node is drained
as a spot cloud's notice reaches Ray (``ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION
--deadline-remaining-seconds D``, the call autoscaler v2 makes), and 1.5 s after its deadline it
is removed (its processes killed). Scenarios:

- ``notice``: the run asks for notices every step (``fault.preemption_check_steps=1``): it
  checkpoints at the notice, waits, and resumes on the node left from that checkpoint. With
  ``--return``, a new slot node joins once the group of one has a registered checkpoint, and
  the group grows back.
- ``ignored``: the same drain and kill, with ``fault.preemption_check_steps=0``: the run trains
  on until the node goes and resumes from its latest periodic checkpoint.

Printed per scenario: the timeline (drain, the notice record, the kill, the resume), steps
recomputed (logged after the checkpoint resumed from and before the kill), the world sizes by
step, the resizes with their cause, and the run's failure and preemption counts. Last line: one
JSON object.

    python benchmarks/preemption.py [notice|ignored ...] [--steps 48] [--every 8] [--delay 2]
        [--deadline 8] [--return] [--start-timeout 15]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=["notice", "ignored"])
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--every", type=int, default=8, help="checkpoint interval (steps)")
    parser.add_argument(
        "--delay", type=float, default=2.0, help="seconds between that checkpoint and the drain"
    )
    parser.add_argument(
        "--deadline",
        type=int,
        default=8,
        help="seconds from the drain to its deadline (the node is removed 1.5 s later)",
    )
    parser.add_argument(
        "--return",
        dest="comes_back",
        action="store_true",
        help="a new slot node joins once the shrunk group has a registered checkpoint (notice "
        "scenario)",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=15.0,
        help="RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S: how long Ray Train retries the old size "
        "after a node is gone (its resources are still counted for a while); Ray's default 60",
    )
    args = parser.parse_args(argv)
    bad = set(args.scenarios) - {"notice", "ignored"}
    if bad:
        parser.error(f"unknown scenario(s) {sorted(bad)}; choose notice and/or ignored")
    # Inherited by the cluster's nodes, and so by Ray Train's controller and its watcher.
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(args.start_timeout)
    os.environ["RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"] = "1"  # Ray's default: 5 s
    # Ray Train's controller takes one report per worker each poll (default 2 s); this run
    # reports every step.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    out = {name: scenario(name, args) for name in args.scenarios}
    print(json.dumps(out))
    return out


def scenario(name: str, args: argparse.Namespace) -> dict:
    """Run one scenario on a fresh local cluster; print its figures and return them."""
    from chaos import checkpoint_registered, recoveries
    from elastic import Training, _figures, add_slot, slot_cluster, slot_run

    from lejepa_ray.launch import events

    storage = tempfile.mkdtemp(prefix=f"lejepa-preempt-{name}-")
    run_dir = f"{storage}/{name}"
    cfg = slot_run(
        name,
        storage,
        args.steps,
        args.every,
        "scaling.num_workers=[1,2]",
        "scaling.batch_size=16",
        f"fault.preemption_check_steps={1 if name == 'notice' else 0}",
        "fault.max_failures=0",  # a preemption must not count as a failure
    )
    drained_at = killed_at = joined_at = None
    with slot_cluster(2) as (cluster, slots):
        training = Training(cfg)
        if training.wait_for(checkpoint_registered(run_dir, args.every)):
            time.sleep(args.delay)
            node = slots.pop()
            drain(cluster.address, node.node_id, args.deadline)
            drained_at = time.time()
            # The cloud takes the node just after the deadline, once Ray Train has stopped the
            # group (it polls every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S): a worker that died first
            # would show its peers' broken collectives as failures of their own.
            time.sleep(max(0.0, drained_at + args.deadline + 1.5 - time.time()))
            cluster.remove_node(node, allow_graceful=False)
            killed_at = time.time()
            comes_back = args.comes_back and name == "notice"
            on_one = functools.partial(_checkpointed_on_one, run_dir)
            if comes_back and training.wait_for(on_one, timeout_s=300, poll_s=1.0):
                add_slot(cluster)  # once the group of one has a checkpoint
                joined_at = time.time()
        result = training.result()
    if killed_at is None:
        raise RuntimeError(f"{name}: the run ended before the node was drained")
    start = training.started
    tensorboard = Path(run_dir) / "tensorboard"
    (recovery,) = recoveries(tensorboard, [killed_at])
    notices = events.read(f"{run_dir}/{events.PREEMPTIONS_FILE}")

    def at(t: float | None) -> float | None:
        return None if t is None else round(t - start, 1)

    out = {
        "drained_at_s": at(drained_at),
        "killed_at_s": at(killed_at),
        "joined_at_s": at(joined_at),
        "notices": [{**r, "time": at(r["time"]), "deadline": at(r["deadline"])} for r in notices],
        "resumed_from": recovery.checkpoint_step,
        "last_step_before_kill": recovery.last_step_before_kill,
        "steps_recomputed": recovery.steps_recomputed,
        "seconds_kill_to_next_step": round(recovery.seconds_to_next_step, 1),
        "final_step": int(result.metrics.get("step", 0)),
        "wall_s": round(training.wall_s, 1),
        "resizes": [
            {**r, "time": at(r["time"])} for r in events.read(f"{run_dir}/{events.RESIZES_FILE}")
        ],
        "counts": events.counts(run_dir),
        "summary": events.summary(run_dir),
        **_figures(tensorboard, args.steps),
    }
    _print(name, out)
    return out


def _checkpointed_on_one(run_dir: str) -> bool:
    """Whether Ray Train has registered a checkpoint of a group of one worker (a grow before
    it would restart from the checkpoint before, taking the steps of the group of one back).
    False while Ray's checkpoint list cannot be read (it is rewritten as checkpoints are
    registered and old ones deleted)."""
    from lejepa_ray import compat
    from lejepa_ray.errors import CheckpointError
    from lejepa_ray.runs import latest_checkpoint

    try:
        latest = latest_checkpoint(run_dir)
    except (CheckpointError, compat.snapshot_read_error(), OSError):
        return False
    return latest is not None and latest.metrics.get("world_size") == 1


def drain(address: str, node_id: str, deadline_s: int) -> None:
    """Drain the node as a spot cloud's preemption notice does (autoscaler v2's call)."""
    subprocess.run(
        [
            str(Path(sys.executable).with_name("ray")),
            "drain-node",
            f"--address={address}",
            f"--node-id={node_id}",
            "--reason=DRAIN_NODE_REASON_PREEMPTION",
            "--reason-message=spot instance reclaimed (benchmarks/preemption.py)",
            f"--deadline-remaining-seconds={deadline_s}",
        ],
        check=True,
        capture_output=True,
        text=True,
    )


def _print(name: str, out: dict) -> None:
    sizes = ", ".join(f"{t['world_size']} from step {t['from_step']}" for t in out["timeline"])
    print(f"{name}: world size {sizes}; finished at step {out['final_step']} in {out['wall_s']} s")
    print(f"  drained at {out['drained_at_s']} s, node removed at {out['killed_at_s']} s")
    for r in out["notices"]:
        stored = (
            "no checkpoint before the restart"
            if r["checkpoint_step"] is None
            else f"checkpoint of step {r['checkpoint_step']} stored {r['stored_s']} s after it"
        )
        print(f"  notice seen by Ray Train at {r['time']} s (deadline {r['deadline']} s): {stored}")
    print(
        f"  resumed from step {out['resumed_from']}; last step before the kill "
        f"{out['last_step_before_kill']}: {out['steps_recomputed']} steps recomputed; "
        f"first step after the kill {out['seconds_kill_to_next_step']} s later"
    )
    for r in out["resizes"]:
        print(
            f"  resize at step {r['step']} ({r['time']} s): {r['from']} -> {r['to']}, {r['cause']}"
        )
    print(f"  {out['summary']}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # chaos.py, elastic.py
    main()
