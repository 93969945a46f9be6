"""The trainer's wait for data at every epoch boundary of a run.

Runs the CPU quickstart (2 workers, DDP, digits) on ``--samples`` images (short epochs, so the
run crosses many boundaries), logging every step. From the run's TensorBoard events, each
step's wait for data is ``time/data_wait_fraction × time/step_s`` (one step per log window);
a boundary step is the first of a new ``data/epoch``. Prints the wait at each boundary, the
median wait of the other steps, then one JSON line. Works on any version of the project that
logs those three metrics, so the same command measures before and after a change.

    python benchmarks/epoch_boundary.py [--samples 512] [--steps 60] [-- key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples", type=int, default=512, help="data.num_samples (before the split)"
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("overrides", nargs="*", help="more config overrides, key=value")
    args = parser.parse_args(argv)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lejepa_ray.config import QUICKSTART, load_config
    from lejepa_ray.launch.driver import run

    storage = tempfile.mkdtemp(prefix="lejepa-epochs-")
    cfg = load_config(
        QUICKSTART,
        [
            "name=epochs",
            f"storage_path={storage}",
            f"data.num_samples={args.samples}",
            f"optim.steps={args.steps}",
            "optim.warmup_steps=2",
            "logging.every_steps=1",
            f"checkpoint.every_steps={args.steps}",
            "probe.knn=false",
            "logging.rankme_samples=0",
            *args.overrides,
        ],
    )
    start = time.time()
    result = run(cfg)
    wall = time.time() - start
    events = EventAccumulator(f"{result.run_dir}/tensorboard", size_guidance={"scalars": 0})
    events.Reload()

    def series(tag: str) -> dict[int, float]:
        return {e.step: e.value for e in events.Scalars(tag)}

    fraction, step_s, epoch = (
        series(t) for t in ("time/data_wait_fraction", "time/step_s", "data/epoch")
    )
    wait = {s: fraction[s] * step_s[s] for s in fraction}
    steps = sorted(wait)
    boundaries = [s for s in steps[1:] if epoch[s] != epoch[s - 1]]
    others = [wait[s] for s in steps[1:] if s not in boundaries]
    for s in boundaries:
        print(f"epoch {int(epoch[s])} starts at step {s}: the trainer waited {wait[s]:.2f} s")
    typical = statistics.median(others) if others else float("nan")
    step = statistics.median(step_s.values())
    print(
        f"{len(boundaries)} boundaries; worst wait {max(wait[s] for s in boundaries):.2f} s; "
        f"median wait of the other steps {typical:.3f} s; median step {step:.2f} s; "
        f"run {wall:.0f} s"
    )
    out = {
        "boundary_waits_s": {int(epoch[s]): round(wait[s], 3) for s in boundaries},
        "first_step_wait_s": round(wait[steps[0]], 3),
        "median_other_wait_s": round(typical, 4),
        "median_step_s": round(step, 3),
        "wall_s": round(wall, 1),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
