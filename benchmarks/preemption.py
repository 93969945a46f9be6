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
  ``--return``, a new slot node joins once the group has shrunk, and the group grows back.
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
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SLOT = "trainer_slot"


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
        help="a new slot node joins once the shrunk group has logged a step (notice scenario)",
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
    import ray
    from chaos import checkpoint_registered, recoveries
    from elastic import _figures
    from ray.cluster_utils import Cluster

    from lejepa_ray.config import QUICKSTART, load_config
    from lejepa_ray.launch import events
    from lejepa_ray.launch.driver import run

    storage = tempfile.mkdtemp(prefix=f"lejepa-preempt-{name}-")
    run_dir = f"{storage}/{name}"
    cfg = load_config(
        QUICKSTART,
        [
            f"name={name}",
            f"storage_path={storage}",
            f"optim.steps={args.steps}",
            "optim.warmup_steps=2",
            "logging.every_steps=1",
            f"checkpoint.every_steps={args.every}",
            "scaling.num_workers=[1,2]",
            "scaling.batch_size=16",
            f"scaling.resources={{{SLOT}: 1}}",
            "scaling.resize_check_s=2",
            f"fault.preemption_check_steps={1 if name == 'notice' else 0}",
            "fault.max_failures=0",  # a preemption must not count as a failure
            "data.num_samples=512",
            "probe.knn=false",
            "logging.rankme_samples=0",
        ],
    )
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 4, "include_dashboard": False}
    )
    slots = [cluster.add_node(num_cpus=1, resources={SLOT: 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    outcome: dict = {}

    def train() -> None:  # in a thread: Ray's node processes start from the main thread only
        try:
            outcome["result"] = run(cfg, print_fn=lambda *_: None)
        except BaseException as e:
            outcome["error"] = e

    start = time.time()
    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    drained_at = killed_at = joined_at = None
    try:
        ready, deadline = checkpoint_registered(run_dir, args.every), time.monotonic() + 600
        while not ready() and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if thread.is_alive():
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
            if args.comes_back and name == "notice":
                shrunk = time.monotonic() + 300
                while (
                    not _stepped_on_one(run_dir) and thread.is_alive() and time.monotonic() < shrunk
                ):
                    time.sleep(0.2)
                if thread.is_alive():
                    cluster.add_node(num_cpus=1, resources={SLOT: 1})
                    joined_at = time.time()
        thread.join()
    finally:
        ray.shutdown()
        cluster.shutdown()
    wall = time.time() - start
    if "error" in outcome:
        raise outcome["error"]
    if killed_at is None:
        raise RuntimeError(f"{name}: the run ended before the node was drained")
    result = outcome["result"]
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
        "wall_s": round(wall, 1),
        "resizes": [
            {**r, "time": at(r["time"])} for r in events.read(f"{run_dir}/{events.RESIZES_FILE}")
        ],
        "counts": events.counts(run_dir),
        "summary": events.summary(run_dir),
        **_figures(tensorboard, args.steps),
    }
    _print(name, out)
    return out


def _stepped_on_one(run_dir: str) -> bool:
    """Whether a group of one worker has logged a step (``metrics.jsonl``)."""
    path = Path(run_dir, "metrics.jsonl")
    if not path.exists():
        return False
    lines = path.read_text().splitlines()
    return any(json.loads(line).get("world_size") == 1 for line in lines if line.endswith("}"))


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
