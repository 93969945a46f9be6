"""Elastic runs on a local multi-node Ray cluster: a group that grows, and one that shrinks.

Each training slot is a node of its own (``ray.cluster_utils.Cluster``: one logical CPU and one
``trainer_slot`` resource); the head has CPUs for the driver and Ray Data but no slot. The CPU
quickstart runs with ``scaling.num_workers=[1, 3]``, ``scaling.batch_size=11`` (a global batch of
33: 33 images on 1 worker, 17 and 16 on 2, so the uneven split runs too) and
``scaling.resources={trainer_slot: 1}``; there are never more than 2 slots:

- ``grow``: one slot at the start, so training starts with 1 worker; a second slot node joins
  ``--delay`` s after the checkpoint of step ``--every`` is registered, and the group grows to 2
  at the next resize check;
- ``shrink``: two slots at the start; ``--delay`` s after that checkpoint one slot node is
  removed (its processes are killed, its slot is gone), and the run goes on with 1 worker
  instead of waiting for a second slot.

Printed per scenario: the timeline of world sizes by step (from the run's TensorBoard
``world_size``), the resizes with their cause (``resizes.jsonl``), the loss logged before and
after each resize, the images per step (constant: the global batch), and whether the run
reached its last step. Last line: one JSON object.

    python benchmarks/elastic.py [grow|shrink ...] [--steps 16] [--every 4] [--delay 2]
        [--start-timeout S]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SLOT = "trainer_slot"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=["grow", "shrink"])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--every", type=int, default=4, help="checkpoint interval (steps)")
    parser.add_argument(
        "--delay", type=float, default=2.0, help="seconds between that checkpoint and the change"
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=None,
        help="RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S for the cluster (Ray's default: 60 s). "
        "After a node is lost, Ray Train first tries the old size again, as the lost node's "
        "resources are still counted, and falls back to the workers left when this runs out",
    )
    args = parser.parse_args(argv)
    bad = set(args.scenarios) - {"grow", "shrink"}
    if bad:
        parser.error(f"unknown scenario(s) {sorted(bad)}; choose grow and/or shrink")
    if args.steps < 3 * args.every:
        parser.error("--steps must be at least 3 × --every: steps before and after the change")
    if args.start_timeout is not None:  # inherited by the nodes, and so by Train's controller
        os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(args.start_timeout)
    out = {name: scenario(name, args.steps, args.every, args.delay) for name in args.scenarios}
    print(json.dumps(out))
    return out


def scenario(name: str, steps: int, every: int, delay: float) -> dict:
    """Run one scenario on a fresh local cluster; print its figures and return them."""
    from chaos import checkpoint_registered

    from lejepa_ray.launch import events

    storage = tempfile.mkdtemp(prefix=f"lejepa-elastic-{name}-")
    run_dir = f"{storage}/{name}"
    cfg = slot_run(
        name,
        storage,
        steps,
        every,
        "scaling.num_workers=[1,3]",
        "scaling.batch_size=11",  # 33 images a step: 33 on 1 worker, 17 + 16 on 2
        "fault.max_failures=2",
    )
    changed_at = None
    with slot_cluster(2 if name == "shrink" else 1) as (cluster, slots):
        training = Training(cfg)
        if training.wait_for(checkpoint_registered(run_dir, every)):
            time.sleep(delay)
            changed_at = time.time()
            if name == "grow":
                add_slot(cluster)
            else:
                cluster.remove_node(slots.pop(), allow_graceful=False)
        result = training.result()
    start = training.started
    figures = _figures(Path(run_dir) / "tensorboard", steps)
    resizes = events.read(f"{run_dir}/{events.RESIZES_FILE}")
    failures = events.read(f"{run_dir}/{events.FAILURES_FILE}")
    out = {
        "changed_at_s": None if changed_at is None else round(changed_at - start, 1),
        "final_step": int(result.metrics.get("step", 0)),
        "wall_s": round(training.wall_s, 1),
        "resizes": [{**r, "time": round(r["time"] - start, 1)} for r in resizes],
        "worker_failures": len(failures),
        **figures,
    }
    _print(name, out)
    return out


def slot_run(name: str, storage: str, steps: int, every: int, *overrides: str) -> Any:
    """The CPU quickstart as these benchmarks run it on slot nodes: ``steps`` steps, a
    checkpoint every ``every``, every step logged, workers placed by ``trainer_slot``, resizes
    checked every 2 s; then ``overrides``."""
    from lejepa_ray.config import QUICKSTART, load_config

    return load_config(
        QUICKSTART,
        [
            f"name={name}",
            f"storage_path={storage}",
            f"optim.steps={steps}",
            "optim.warmup_steps=2",
            "logging.every_steps=1",
            f"checkpoint.every_steps={every}",
            f"scaling.resources={{{SLOT}: 1}}",
            "scaling.resize_check_s=2",
            "data.num_samples=512",
            "probe.knn=false",
            "logging.rankme_samples=0",
            *overrides,
        ],
    )


@contextlib.contextmanager
def slot_cluster(slots: int) -> Iterator[tuple[Any, list]]:
    """A local ``ray.cluster_utils.Cluster`` with ``slots`` slot nodes, this process connected
    to it; shut down on exit. The head has CPUs for the driver, Ray Train's controller and Ray
    Data, and no slot; each slot node has 1 CPU and 1 ``trainer_slot``."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 4, "include_dashboard": False}
    )
    try:
        nodes = [add_slot(cluster) for _ in range(slots)]
        cluster.wait_for_nodes()
        # The workers' progress lines stay in the session's logs: the benchmarks print figures.
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        yield cluster, nodes
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def add_slot(cluster: Any) -> Any:
    """Add a slot node to ``cluster``; the node."""
    return cluster.add_node(num_cpus=1, resources={SLOT: 1})


class Training:
    """A run of ``cfg`` started in a thread (Ray's node processes start from the main thread
    only, so the cluster is changed from there while it trains)."""

    def __init__(self, cfg: Any):
        from lejepa_ray.launch.driver import run

        self.outcome: dict = {}

        def train() -> None:
            try:
                self.outcome["result"] = run(cfg, print_fn=lambda *_: None)
            except BaseException as e:
                self.outcome["error"] = e

        self.started = time.time()
        self.wall_s = 0.0
        self.thread = threading.Thread(target=train, daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def wait_for(
        self, ready: Callable[[], bool], timeout_s: float = 600, poll_s: float = 0.2
    ) -> bool:
        """Wait until ``ready()`` while the run goes on; whether it is still going."""
        deadline = time.monotonic() + timeout_s
        while not ready() and self.alive and time.monotonic() < deadline:
            time.sleep(poll_s)
        return self.alive

    def result(self) -> Any:
        """Wait for the run to end; its result (or what it raised)."""
        self.thread.join()
        self.wall_s = time.time() - self.started
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["result"]


def _figures(tensorboard: Path, steps: int) -> dict:
    """World size by step, the loss around each change of world size, images per step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard), size_guidance={"scalars": 0})
    events.Reload()  # applies the purges of steps logged again after a restart

    def series(tag: str) -> dict[int, float]:
        return {e.step: e.value for e in events.Scalars(tag)}

    world, loss = series("world_size"), series("loss")
    timeline, previous = [], None
    for step in sorted(world):
        if world[step] != previous:
            timeline.append({"from_step": step, "world_size": int(world[step])})
            previous = world[step]
    around = []
    for change in timeline[1:]:
        s = change["from_step"]
        before = [loss[k] for k in range(s - 4, s) if k in loss]
        after = [loss[k] for k in range(s, s + 4) if k in loss]
        # The jump at the resize against the step-to-step noise on either side of it.
        noise = [abs(b - a) for side in (before, after) for a, b in itertools.pairwise(side)]
        around.append(
            {
                "step": s,
                "loss_before": [round(v, 4) for v in before],
                "loss_after": [round(v, 4) for v in after],
                "jump": round(abs(after[0] - before[-1]), 4) if before and after else None,
                "noise": round(max(noise), 4) if noise else None,
            }
        )
    images = series("batch/images_per_step")  # counted on every rank, summed
    return {
        "timeline": timeline,
        "loss_around_resize": around,
        "images_per_step": sorted({int(v) for v in images.values()}),
        "steps_logged_once": sorted(loss) == list(range(1, steps + 1)),
    }


def _print(name: str, out: dict) -> None:
    sizes = ", ".join(f"{t['world_size']} from step {t['from_step']}" for t in out["timeline"])
    print(f"{name}: world size {sizes}; finished at step {out['final_step']} in {out['wall_s']} s")
    for r in out["resizes"]:
        print(
            f"  resize at step {r['step']} ({r['time']} s): {r['from']} -> {r['to']}, {r['cause']}"
        )
    for a in out["loss_around_resize"]:
        print(
            f"  loss before step {a['step']}: {a['loss_before']}, from it: {a['loss_after']} "
            f"(jump {a['jump']}, largest step-to-step change around it {a['noise']})"
        )
    once = out["steps_logged_once"]
    print(f"  images per step: {out['images_per_step']}; steps logged once: {once}")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # chaos.py
    main()
