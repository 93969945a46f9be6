"""What probing during training costs the trainer: step time with ``probe.every_steps`` on
against off.

Runs the CPU quickstart (2 workers, DDP, digits) twice in one Ray instance, the same seed and
steps: first without probes during training, then with the kNN and linear probes of every
``--every``-th step's checkpoint, which Ray Train runs as tasks of their own (one CPU each)
while the workers train on. Both checkpoint every ``--save`` steps. From each run's TensorBoard
events: the median and mean ``time/step_s`` over the log windows after ``--skip`` steps
(start-up), the overhead of the probed run against the other, and how long each probe took.
Last line: one JSON object.

    python benchmarks/probe_overhead.py [--steps 250] [--every 100] [--save 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--every", type=int, default=100, help="probe.every_steps")
    parser.add_argument("--save", type=int, default=50, help="checkpoint.every_steps")
    parser.add_argument("--skip", type=int, default=20, help="steps left out at the start")
    args = parser.parse_args(argv)
    if args.every % args.save or args.every >= args.steps:
        parser.error("--every must be a multiple of --save, below --steps")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lejepa_ray.config import QUICKSTART, load_config
    from lejepa_ray.launch.driver import run

    storage = tempfile.mkdtemp(prefix="lejepa-probe-overhead-")
    out: dict = {}
    for name, every in (("off", 0), ("on", args.every)):
        cfg = load_config(
            QUICKSTART,
            [
                f"name={name}",
                f"storage_path={storage}",
                f"optim.steps={args.steps}",
                f"checkpoint.every_steps={args.save}",
                f"probe.every_steps={every}",
                "probe.baseline=false",
            ],
        )
        result = run(cfg, print_fn=lambda *_: None)
        events = EventAccumulator(f"{result.run_dir}/tensorboard")
        events.Reload()
        times = [e.value for e in events.Scalars("time/step_s") if e.step > args.skip]
        out[name] = {
            "median_step_s": statistics.median(times),
            "mean_step_s": statistics.fmean(times),
            "windows": len(times),
            "probes": {
                step: {k: r[k] for k in r if k != "step"}
                for step, r in result.probes_during.items()
            },
        }
        print(
            f"probes {name}: step {out[name]['median_step_s'] * 1000:.0f} ms median, "
            f"{out[name]['mean_step_s'] * 1000:.0f} ms mean over {len(times)} windows"
        )
    for step, r in out["on"]["probes"].items():
        figures = ", ".join(f"{k.removeprefix('probe/')} {v:.3g}" for k, v in r.items())
        print(f"  probe of step {step}: {figures}")
    for stat in ("median", "mean"):
        on, off = out["on"][f"{stat}_step_s"], out["off"][f"{stat}_step_s"]
        out[f"overhead_{stat}"] = on / off - 1
    print(
        f"overhead of probing every {args.every} steps: {out['overhead_median']:+.1%} "
        f"(median step), {out['overhead_mean']:+.1%} (mean)"
    )
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
