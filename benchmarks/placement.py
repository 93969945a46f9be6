"""Views made off the trainer's node: where ``data.node_resource`` puts the views tasks.

A local three-node cluster (``ray.cluster_utils.Cluster``): the head holds the driver, Ray
Train's controller and Ray Data's executor; a *trainer* node stands for a GPU node (it alone
holds ``trainer_slot``, which the training worker asks for); a *data* node stands for a
CPU-only ``cpu_data`` node (it alone declares ``data_node``). A short quickstart run with
``data.node_resource=data_node`` trains there, and Ray's state API then says on which node each
views task and the training worker ran.

    .venv/bin/python benchmarks/placement.py [--steps 6]

Prints the tasks per node and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
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
    """Train ``steps`` steps on a fresh three-node cluster; return where things ran."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors, list_tasks

    from lejepa_ray.cli import QUICKSTART
    from lejepa_ray.config import load_config
    from lejepa_ray.launch.driver import run

    storage = tempfile.mkdtemp(prefix="lejepa-placement-")
    cfg = load_config(
        QUICKSTART,
        [
            "name=placement",
            f"storage_path={storage}",
            f"optim.steps={steps}",
            "optim.warmup_steps=2",
            "logging.every_steps=1",
            f"checkpoint.every_steps={steps}",
            "scaling.num_workers=1",
            f"scaling.resources={{{TRAINER_SLOT}: 1}}",
            f"data.node_resource={DATA_NODE}",
            "data.num_samples=256",
            "probe.knn=false",
            "logging.rankme_samples=0",
        ],
    )
    # The dashboard serves the state API that tells where each task ran.
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": True}
    )
    nodes = {
        "trainer": cluster.add_node(num_cpus=1, resources={TRAINER_SLOT: 1}),
        "data": cluster.add_node(num_cpus=2, resources={DATA_NODE: 1}),
    }
    cluster.wait_for_nodes()
    roles = {node.node_id: role for role, node in nodes.items()}
    roles[cluster.head_node.node_id] = "head"
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    start = time.time()
    try:
        result = run(cfg, print_fn=lambda *_: None)
        views: dict[str, int] = {}
        for task in list_tasks(limit=10_000, detail=True, raise_on_missing_output=False):
            if "make_views" in task.name:
                role = roles.get(task.node_id, "unknown")
                views[role] = views.get(role, 0) + 1
        trainers = sorted(
            roles.get(actor.node_id, "unknown")
            for actor in list_actors(limit=1_000, detail=True, raise_on_missing_output=False)
            if "RayTrainWorker" in actor.class_name
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
    out = {
        "steps": steps,
        "final_step": int(result.metrics.get("step", 0)),
        "views_tasks_by_node": views,
        "train_workers_by_node": trainers,
        "wall_s": round(time.time() - start, 1),
    }
    print(
        f"views tasks by node: {views}; training workers on: {trainers}; "
        f"reached step {out['final_step']} of {steps} in {out['wall_s']} s"
    )
    return out


if __name__ == "__main__":
    main()
