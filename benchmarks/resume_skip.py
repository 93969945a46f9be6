"""Time from a resumed views pipeline's start to its first batch, for a run stopped late in an
epoch: rows skipped at the source (how the pipeline resumes) against rows drawn and dropped by
the consumer (how it resumed before: every dropped row was read, decoded and cropped).

    python benchmarks/resume_skip.py --data /tmp/bpq --at 0.9 --repeats 3

Both start a fresh pipeline on the same local Ray instance at epoch 1, ``--at`` of the way
through it, and stop at the first batch past that point. Prints one line per run and, last,
one JSON line with the medians and the views each made.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import ray
from ray.data import DataContext

from lejepa_ray import compat
from lejepa_ray.data.feed import iter_views
from lejepa_ray.data.readers import source_plan
from lejepa_ray.data.sources import data_from_arg
from lejepa_ray.data.stream import build_view_stream


def first_batch(cfg, samples: int, batch_size: int, at_source: bool) -> tuple[float, int]:
    """Seconds from the pipeline's build to the first batch at ``samples`` into epoch 1, and the
    samples the pipeline made views of by then."""
    start = time.perf_counter()
    stream = build_view_stream(cfg, 1, samples if at_source else 0, pass_epochs=1)
    batches = iter_views(stream.dataset, stream.counter, cfg, batch_size, device="cpu")
    for _ in range(0 if at_source else samples // batch_size):
        next(batches)  # drawn and dropped, as a consumer-side skip does
    next(batches)
    seconds = time.perf_counter() - start
    made = ray.get(stream.counter.totals.remote())["seen"]
    ray.kill(stream.counter)
    return seconds, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits", help="a source or a path (as data bench)")
    parser.add_argument("--at", type=float, default=0.9, help="fraction of the epoch done")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="CPUs of views tasks")
    args = parser.parse_args()
    cfg = data_from_arg(args.data)
    ray.init(address="local", num_cpus=args.workers + 1, include_dashboard=False)
    DataContext.get_current().enable_progress_bars = False
    rows = source_plan(cfg).plan.rows_per_epoch
    samples = int(args.at * rows) // args.batch_size * args.batch_size
    print(f"{cfg.path or cfg.source}: {rows} samples an epoch, resuming at {samples} of epoch 1")
    with compat.quiet_logger("ray.data", logging.WARNING):
        first_batch(cfg, samples, args.batch_size, True)  # warm-up: Ray starts its workers
        _runs(cfg, rows, samples, args)


def _runs(cfg, rows: int, samples: int, args: argparse.Namespace) -> None:
    runs: dict[str, list[tuple[float, int]]] = {"source": [], "consumer": []}
    for r in range(args.repeats):  # interleaved: this machine's speed drifts within minutes
        for mode in runs:
            seconds, made = first_batch(cfg, samples, args.batch_size, mode == "source")
            runs[mode].append((seconds, made))
            print(
                f"  run {r}, skipped at the {mode}: first batch after {seconds:.2f} s, "
                f"views of {made} samples"
            )
    out = {
        "data": cfg.path or cfg.source,
        "rows_per_epoch": rows,
        "resumed_at": samples,
        **{
            f"{mode}_s": round(statistics.median(s for s, _ in got), 2)
            for mode, got in runs.items()
        },
        **{f"{mode}_views": got[0][1] for mode, got in runs.items()},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
