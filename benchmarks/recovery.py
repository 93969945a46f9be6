"""Recovery from a killed worker: SIGKILL a Ray Train worker mid-run and time the restart.

Runs the CPU quickstart (2 workers, DDP, digits) with ``fault.max_failures`` set, logging every
step and checkpointing every ``--every`` steps. Once Ray Train has registered the checkpoint of
step ``--every`` it waits ``--delay`` seconds, kills one training worker process (SIGKILL), and lets
Ray Train restart the worker group from that checkpoint. From the run's TensorBoard events it
reports:

- seconds from the kill until the restarted workers had loaded the checkpoint;
- seconds from the kill until the first step after the restart was logged;
- steps recomputed: those logged after the checkpoint and before the kill.

Last line: one JSON object.

    python benchmarks/recovery.py [--steps 24] [--every 8] [--delay 6] [--storage DIR]
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
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--every", type=int, default=8, help="checkpoint interval (steps)")
    parser.add_argument(
        "--delay", type=float, default=6.0, help="seconds between the checkpoint and the kill"
    )
    parser.add_argument("--storage", default=None, help="run directory parent (default: temp)")
    args = parser.parse_args(argv)

    from lejepa_ray.chaos import KillAfter, checkpoint_registered, recovery
    from lejepa_ray.cli import QUICKSTART
    from lejepa_ray.config import load_config
    from lejepa_ray.pretrain import run

    storage = args.storage or tempfile.mkdtemp(prefix="lejepa-recovery-")
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
            "fault.max_failures=2",
        ],
    )
    killer = KillAfter(
        checkpoint_registered(Path(storage, "recovery"), args.every), delay_s=args.delay
    )
    killer.start()
    start = time.time()
    result = run(cfg)
    wall = time.time() - start
    killer.join()
    if killer.killed_at is None:
        sys.exit(f"no worker was killed: {killer.error}")
    figures = recovery(Path(result.run_dir, "tensorboard"), killer.killed_at, args.every)
    print(
        f"killed worker pid {killer.pid} {killer.killed_at - start:.1f} s into the run, "
        f"{args.delay:.0f} s after the checkpoint of step {args.every}"
    )
    print(
        f"checkpoint loaded by the restarted workers {figures.seconds_to_resume:.1f} s "
        f"after the kill; first new step logged after {figures.seconds_to_next_step:.1f} s"
    )
    print(
        f"steps recomputed: {figures.steps_recomputed} (logged steps "
        f"{args.every + 1}..{figures.last_step_before_kill} were lost with the kill)"
    )
    print(f"run finished at step {int(result.metrics['step'])} of {args.steps} in {wall:.0f} s")
    out = {
        **asdict(figures),
        "steps_recomputed": figures.steps_recomputed,
        "final_step": int(result.metrics["step"]),
        "wall_s": wall,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
