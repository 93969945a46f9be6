"""Views made off the trainer's node: where ``data.node_resource`` puts the views tasks.

A local three-node cluster (``ray.cluster_utils.Cluster``): the head holds the driver, Ray
Train's controller and Ray Data's executor; a *trainer* node stands for a GPU node (it alone
holds ``trainer_slot``, which the training worker asks for); a *data* node stands for a
CPU-only ``cpu_data`` node (it alone declares ``data_node``). Two short quickstart runs train
there, one without ``data.node_resource`` (the control: views wherever CPUs are free) and one
with ``data.node_resource=data_node``; Ray's state API then says on which node each views task
and the training worker ran.

    .venv/bin/python benchmarks/placement.py [--steps 6]

Prints the tasks per node and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time

TRAINER_SLOT = "trainer_slot"
DATA_NODE = "data_node"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)
    out = scenario(args.steps)
    print(json.dumps(out))
    return out


def scenario(steps: int) -> dict:
    """Train ``steps`` steps twice on a fresh three-node cluster, without ``data.node_resource``
    (the control) and with it; return where the views tasks and the training worker ran."""
    import ray
    from ray.cluster_utils import Cluster

    storage = tempfile.mkdtemp(prefix="lejepa-placement-")
    # The dashboard serves the state API that tells where each task ran. Every node has CPUs to
    # spare beyond the training worker's, so that only the setting keeps views off them.
    head = {"num_cpus": 3, "include_dashboard": True, "dashboard_port": _free_port()}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    nodes = {
        "trainer": cluster.add_node(num_cpus=3, resources={TRAINER_SLOT: 1}),
        "data": cluster.add_node(num_cpus=2, resources={DATA_NODE: 1}),
    }
    cluster.wait_for_nodes()
    roles = {node.node_id: role for role, node in nodes.items()}
    roles[cluster.head_node.node_id] = "head"
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    try:
        control = _train(storage, "control", steps, None, roles, seen=set())
        placed = _train(storage, "placed", steps, DATA_NODE, roles, seen=control.pop("_seen"))
        placed.pop("_seen")
    finally:
        ray.shutdown()
        cluster.shutdown()
    out = {"steps": steps, "control": control, "placed": placed}
    for name, run in (("without", control), ("with", placed)):
        print(
            f"{name} data.node_resource: views tasks by node {run['views_tasks_by_node']}, "
            f"training worker on {run['train_workers_by_node']}, step {run['final_step']} of "
            f"{steps} in {run['wall_s']} s"
        )
    return out


def _free_port() -> int:
    """A loopback port nobody listens on now: another Ray instance on this machine (the test
    suite's) may hold the dashboard's default."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train(
    storage: str, name: str, steps: int, resource: str | None, roles: dict, seen: set
) -> dict:
    """One short quickstart run on the connected cluster; where its views tasks and training
    worker ran (those not in ``seen``: the task and actor ids of earlier runs)."""
    from ray.util.state import list_actors, list_tasks

    from lejepa_ray.config import QUICKSTART, load_config
    from lejepa_ray.launch.driver import run

    overrides = [
        f"name={name}",
        f"storage_path={storage}",
        f"optim.steps={steps}",
        "optim.warmup_steps=2",
        "logging.every_steps=1",
        f"checkpoint.every_steps={steps}",
        "scaling.num_workers=1",
        f"scaling.resources={{{TRAINER_SLOT}: 1}}",
        "data.workers=2",
        "data.num_samples=1024",
        # Units of 32 rows, 8 a task: the run's short pass (2 epochs of 1,024 samples, 64
        # units) is 8 views tasks, enough to see where each was placed.
        "data.task_units=8",
        "probe.knn=false",
        "logging.rankme_samples=0",
    ]
    if resource:
        overrides.append(f"data.node_resource={resource}")
    start = time.time()
    result = run(load_config(QUICKSTART, overrides), print_fn=lambda *_: None)
    wall = time.time() - start
    views: dict[str, int] = {}
    ids = set(seen)
    for task in list_tasks(limit=10_000, detail=True, raise_on_missing_output=False):
        ids.add(task.task_id)
        if task.task_id in seen or "make_views" not in task.name:
            continue
        # A task Ray retried or cancelled has no node: counted apart, not as a placement.
        where = (
            roles.get(task.node_id, "unknown")
            if task.state in ("FINISHED", "RUNNING")
            else (f"not run ({task.state})")
        )
        views[where] = views.get(where, 0) + 1
    trainers = []
    for actor in list_actors(limit=1_000, detail=True, raise_on_missing_output=False):
        ids.add(actor.actor_id)
        if actor.actor_id not in seen and "RayTrainWorker" in actor.class_name:
            trainers.append(roles.get(actor.node_id, "unknown"))
    return {
        "final_step": int(result.metrics.get("step", 0)),
        "views_tasks_by_node": views,
        "train_workers_by_node": sorted(trainers),
        "wall_s": round(wall, 1),
        "_seen": ids,
    }


if __name__ == "__main__":
    main()
