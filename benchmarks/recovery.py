"""Recovery from killed workers: SIGKILL a Ray Train worker three times in one run.

Runs the CPU quickstart (2 workers, DDP, digits) with ``fault.max_failures=3``, logging every
step and checkpointing every ``--every`` steps, and kills one training worker (SIGKILL):

1. ``--delay`` s after Ray Train registered the checkpoint of step ``every``;
2. ``--delay`` s after it registered the checkpoint of step ``2 * every``;
3. while the checkpoint of step ``3 * every`` is being written (its files have appeared, Ray
   has not registered it), so the restart must come from the one before.

Ray Train restarts the worker group each time from the latest complete checkpoint. From the
run's TensorBoard events it reports, per kill:

- the checkpoint resumed from;
- seconds from the kill until the restarted workers had loaded it;
- seconds from the kill until the first step after the restart was logged;
- steps recomputed: those logged after that checkpoint and before the kill.

Last line: one JSON object.

    python benchmarks/recovery.py [--steps 40] [--every 8] [--delay 4] [--storage DIR|URI]

``--storage`` may be object storage (``s3://bucket/prefix``, with the AWS environment set).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=8, help="checkpoint interval (steps)")
    parser.add_argument(
        "--delay", type=float, default=4.0, help="seconds between a checkpoint and a kill"
    )
    parser.add_argument(
        "--storage", default=None, help="run directory parent, a path or URI (default: temp)"
    )
    args = parser.parse_args(argv)
    if args.steps <= 3 * args.every:
        sys.exit(f"--steps must exceed 3 * --every ({3 * args.every}): the run needs 3 kills")

    from chaos import (
        KillAfter,
        checkpoint_being_written,
        checkpoint_registered,
        recoveries,
    )

    from lejepa_ray.config import QUICKSTART, load_config
    from lejepa_ray.launch.driver import run

    storage = args.storage or tempfile.mkdtemp(prefix="lejepa-recovery-")
    run_dir = f"{storage.rstrip('/')}/recovery"
    cfg = load_config(
        QUICKSTART,
        [
            "name=recovery",
            f"storage_path={storage}",
            f"optim.steps={args.steps}",
            "optim.warmup_steps=2",
            "logging.every_steps=1",
            f"checkpoint.every_steps={args.every}",
            "probe.knn=false",
            "logging.rankme_samples=0",
            "fault.max_failures=3",
        ],
    )
    plan = [
        ("registered", checkpoint_registered(run_dir, args.every), args.delay),
        ("registered", checkpoint_registered(run_dir, 2 * args.every), args.delay),
        ("being written", checkpoint_being_written(run_dir, 3 * args.every), 0.0),
    ]
    killers = []

    def arm() -> None:  # one kill after another: each waits for its own checkpoint
        for _, ready, delay in plan:
            killer = KillAfter(ready, delay_s=delay, timeout_s=900)
            killers.append(killer)
            killer.run()

    import threading

    thread = threading.Thread(target=arm, daemon=True)
    thread.start()
    start = time.time()
    result = run(cfg)
    wall = time.time() - start
    thread.join(timeout=1)
    failed = [k.error for k in killers if k.killed_at is None]
    if len(killers) < 3 or failed:
        sys.exit(f"not every kill happened: {failed or 'the run ended first'}")
    tensorboard = _local_copy(f"{result.run_dir}/tensorboard")
    figures = recoveries(tensorboard, [k.killed_at for k in killers])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard))  # applies the purges of replayed steps
    events.Reload()
    steps = [e.step for e in events.Scalars("loss")]
    for (when, _, _), killer, fig, n in zip(plan, killers, figures, (1, 2, 3), strict=True):
        print(
            f"kill {n} (pid {killer.pid}, {killer.killed_at - start:.1f} s in, checkpoint "
            f"{when}): resumed from step {fig.checkpoint_step}, loaded after "
            f"{fig.seconds_to_resume:.1f} s, next step after {fig.seconds_to_next_step:.1f} s, "
            f"{fig.steps_recomputed} steps recomputed"
        )
    print(
        f"run finished at step {int(result.metrics['step'])} of {args.steps} in {wall:.0f} s; "
        f"steps logged once each: {steps == list(range(1, args.steps + 1))}"
    )
    out = {
        "kills": [
            {**asdict(f), "steps_recomputed": f.steps_recomputed, "checkpoint": when}
            for (when, _, _), f in zip(plan, figures, strict=True)
        ],
        "final_step": int(result.metrics["step"]),
        "steps_logged_once": steps == list(range(1, args.steps + 1)),
        "wall_s": wall,
    }
    print(json.dumps(out))
    return out


def _local_copy(folder: str) -> Path:
    """``folder`` itself when local, else a local copy of it (TensorBoard's readers and the
    figures read a local folder)."""
    if "://" not in folder:
        return Path(folder)
    from lejepa_ray.storage import download

    local = tempfile.mkdtemp(prefix="lejepa-recovery-tb-")
    download(folder, local)
    return Path(local)


if __name__ == "__main__":
    main()
