"""Training stall per checkpoint: synchronous against asynchronous uploads to S3.

For each mode of ``checkpoint.upload`` (``sync``, ``async``; interleaved with ``--repeats``, the
order flipped every other round), pretrains ``--model`` (default ViT-S/16, about 22 M
parameters: a checkpoint of about 260 MB with AdamW's moments) for ``--steps`` steps on
generated images (``data.source=synthetic``, two ``--size`` px global views, no local views),
one CPU worker, ``--batch-size`` images a step, logging every step and checkpointing every
``--every`` steps into a fresh prefix of an S3 bucket: a local moto server (``tests/s3.py``)
unless ``--storage`` names one (``s3://bucket/prefix``, with the AWS environment set).

From the run's ``metrics.jsonl`` (``time/step_s`` of step s+1 includes the report of step s, the
checkpoint of a save step included):

- baseline step: the median ``time/step_s`` of the steps after the first two (compile,
  warm-up) that do not follow a checkpoint;
- stall per checkpoint: for each checkpoint at step c before the last step, the sum over steps
  c+1 .. c+every-1 of (``time/step_s`` - baseline), which also counts the steps slowed by a
  background upload competing for the CPUs;
- ``time/checkpoint_s``: the seconds the training thread spent in each checkpoint (waiting for
  the previous upload, saving, and with ``sync`` uploading), as the workers log it.

Also the size of one checkpoint (its files in storage). Ray Train's controller takes one report
per poll and, with ``sync``, each report waits for it; ``--poll-s`` sets that interval
(``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, Ray's default 2 s) so that a report every step does not
stall training by itself. Last line: one JSON object.

    python benchmarks/checkpoint_stall.py [--model vit_small_patch16_224] [--size 224]
        [--steps 25] [--every 5] [--batch-size 4] [--modes sync async] [--repeats 1]
        [--storage s3://bucket/prefix] [--poll-s 0.1] [--server-nice 0] [--server-idle]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODES = ("sync", "async")
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
WARMUP_STEPS = 2
"""The first steps, left out of the baseline (compilation, allocator warm-up)."""


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--every", type=int, default=5, help="checkpoint interval (steps)")
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--size", type=int, default=224, help="global view side (px)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per step")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode, interleaved")
    parser.add_argument(
        "--storage", default=None, help="an s3:// prefix (default: a local moto server)"
    )
    parser.add_argument(
        "--poll-s",
        type=float,
        default=0.1,
        help="RAY_TRAIN_HEALTH_CHECK_INTERVAL_S: Ray Train's report poll (Ray's default: 2 s)",
    )
    parser.add_argument(
        "--server-nice",
        type=int,
        default=0,
        help="niceness of the local moto server (19: it takes only CPU time training leaves, "
        "as a storage service on other machines would); not with --storage",
    )
    parser.add_argument(
        "--server-idle",
        action="store_true",
        help="schedule the local moto server SCHED_IDLE (Linux): it runs only on CPU time "
        "nothing else wants, closer than any niceness to a storage service that uses none of "
        "the training node's CPUs; not with --storage",
    )
    args = parser.parse_args(argv)
    if args.every < 2:
        parser.error("--every must be at least 2: a checkpoint needs steps after it")
    if args.steps <= args.every + WARMUP_STEPS:
        parser.error(f"--steps must exceed --every + {WARMUP_STEPS}: a checkpoint before the end")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.storage and (args.server_nice or args.server_idle):
        parser.error("--server-nice and --server-idle set the local server: not with --storage")

    poll_before = os.environ.get(POLL_ENV)
    os.environ[POLL_ENV] = str(args.poll_s)  # read by the controller that each run starts
    server, env_before, logs = None, None, None
    try:
        if args.storage is None:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            import s3

            logs = tempfile.mkdtemp(prefix="lejepa-stall-s3-")  # moto's log
            server = s3.start(Path(logs))
            if args.server_nice:
                os.setpriority(os.PRIO_PROCESS, server.process.pid, args.server_nice)
            if args.server_idle:
                os.sched_setscheduler(server.process.pid, os.SCHED_IDLE, os.sched_param(0))
            env_before = s3.apply_env(server)  # the Ray workers inherit it
            base = server.uri("checkpoint-stall")
        else:
            base = args.storage.rstrip("/")
        runs = _run_all(args, base, cleanup=server is not None)
    finally:
        if server is not None:
            s3.restore_env(env_before)
            server.stop()
        if logs is not None:
            shutil.rmtree(logs, ignore_errors=True)
        if poll_before is None:
            os.environ.pop(POLL_ENV, None)
        else:
            os.environ[POLL_ENV] = poll_before
    out = _summary(args, base, runs)
    print(json.dumps(out))
    return out


def _run_all(args: argparse.Namespace, base: str, cleanup: bool) -> list[dict]:
    """Every run, in order; Ray is started once for them all and shut down at the end (one
    this process was connected to already is left running)."""
    import ray

    from lejepa_ray.launch import runtime

    order = []
    for r in range(args.repeats):  # sync async, async sync, ...: drift weighs on both
        modes = args.modes if r % 2 == 0 else list(reversed(args.modes))
        order += [(mode, r) for mode in modes]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = []
    # The driver would start the same instance; started here to keep the workers' progress
    # lines out of the console (they stay in the session's logs).
    started = runtime.connect(train_cpus=1, log_to_driver=False)
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        for mode, r in order:
            runs.append(_one_run(args, f"{base}/{stamp}-{mode}-{r}", mode, r, cleanup))
    finally:
        if started:
            ray.shutdown()
    return runs


def _one_run(args: argparse.Namespace, storage: str, mode: str, repeat: int, cleanup: bool):
    from lejepa_ray import storage as store
    from lejepa_ray.config import QUICKSTART, load_config
    from lejepa_ray.launch.driver import run

    cfg = load_config(
        QUICKSTART,
        [
            f"name=stall-{mode}",
            f"storage_path={storage}",
            f"model.name={args.model}",
            "data.source=synthetic",
            "data.num_samples=512",
            f"data.image_size={args.size}",
            "data.views.global_views=2",
            f"data.views.global_size={args.size}",
            "data.views.local_views=0",
            "scaling.num_workers=1",
            f"scaling.batch_size={args.batch_size}",
            f"optim.steps={args.steps}",
            "optim.warmup_steps=2",
            "logging.every_steps=1",
            "logging.rankme_samples=0",
            f"checkpoint.every_steps={args.every}",
            f"checkpoint.upload={mode}",
            "probe.knn=false",
        ],
    )
    print(f"{mode} (round {repeat + 1}): {args.model}, {args.steps} steps into {storage}")
    started = time.time()
    result = run(cfg, print_fn=lambda *_: None)
    wall = time.time() - started
    text = store.read_text(f"{result.run_dir}/metrics.jsonl") or ""
    figures = stall(parse_metrics(text), args.steps, args.every)
    files = store.Folder.at(result.checkpoint).files() if result.checkpoint else {}
    out = {
        "mode": mode,
        "round": repeat,
        "run_dir": result.run_dir,
        **figures,
        "checkpoint_bytes": sum(files.values()),
        "checkpoint_files": len(files),
        "train_s": round(result.train_seconds, 2),
        "wall_s": round(wall, 2),
    }
    _print_run(out)
    if cleanup:  # moto holds every object in memory: drop this run's checkpoints
        filesystem, path = store.resolve_filesystem(storage)
        filesystem.delete_dir(path)
    return out


def parse_metrics(text: str) -> dict[int, dict]:
    """The lines of a ``metrics.jsonl`` merged by step (a line cut short is skipped)."""
    by_step: dict[int, dict] = {}
    for line in text.splitlines():
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (ValueError, KeyError, TypeError):
            continue
        by_step.setdefault(step, {}).update(row)
    return by_step


def stall(by_step: dict[int, dict], steps: int, every: int) -> dict:
    """Baseline step time, the stall of each checkpoint before the last step, and the
    training thread's ``time/checkpoint_s``, from the metrics of one run by step."""
    step_s = {s: float(m["time/step_s"]) for s, m in by_step.items() if "time/step_s" in m}
    checkpoints = list(range(every, steps, every))
    after = {c + 1 for c in checkpoints}
    calm = [t for s, t in step_s.items() if s > WARMUP_STEPS and s not in after]
    if not calm:
        raise ValueError("no step to take the baseline from: raise --steps")
    baseline = statistics.median(calm)
    stalls = {}
    for c in checkpoints:
        window = [s for s in range(c + 1, c + every) if s <= steps]
        missing = [s for s in window if s not in step_s]
        if missing:
            raise ValueError(f"metrics.jsonl has no time/step_s for steps {missing}")
        stalls[c] = sum(step_s[s] - baseline for s in window)
    in_thread = {
        s: float(m["time/checkpoint_s"]) for s, m in by_step.items() if "time/checkpoint_s" in m
    }
    return {
        "baseline_step_s": round(baseline, 4),
        "stall_s": {str(c): round(v, 4) for c, v in stalls.items()},
        "stall_mean_s": round(statistics.fmean(stalls.values()), 4),
        # logged at the step after each checkpoint: keyed by the checkpoint's step
        "checkpoint_s": {str(s - 1): round(v, 4) for s, v in sorted(in_thread.items())},
        "checkpoint_s_mean": round(statistics.fmean(in_thread.values()), 4) if in_thread else None,
        "step_s": {str(s): round(t, 4) for s, t in sorted(step_s.items())},
    }


def _print_run(r: dict) -> None:
    each = ", ".join(f"{c}: {v:+.2f}" for c, v in r["stall_s"].items())
    ckpt = ", ".join(f"{c}: {v:.2f}" for c, v in r["checkpoint_s"].items())
    mean = r["checkpoint_s_mean"]
    print(
        f"  baseline step {r['baseline_step_s']:.3f} s; stall per checkpoint "
        f"{r['stall_mean_s']:+.2f} s (after step {each}); time/checkpoint_s "
        f"{'n/a' if mean is None else f'{mean:.2f}'} s ({ckpt}); checkpoint "
        f"{r['checkpoint_bytes'] / 2**20:.1f} MiB in {r['checkpoint_files']} files; "
        f"trained in {r['train_s']:.0f} s"
    )


def _summary(args: argparse.Namespace, base: str, runs: list[dict]) -> dict:
    modes = {}
    for mode in args.modes:
        mine = [r for r in runs if r["mode"] == mode]
        stalls = [v for r in mine for v in r["stall_s"].values()]
        in_thread = [v for r in mine for v in r["checkpoint_s"].values()]
        modes[mode] = {
            "baseline_step_s": round(statistics.median(r["baseline_step_s"] for r in mine), 4),
            "stall_mean_s": round(statistics.fmean(stalls), 4),
            "stall_s": stalls,
            "checkpoint_s_mean": round(statistics.fmean(in_thread), 4) if in_thread else None,
            "checkpoint_bytes": mine[0]["checkpoint_bytes"],
        }
    ratio = None
    if {"sync", "async"} <= modes.keys() and modes["sync"]["stall_mean_s"] > 0:
        ratio = round(modes["async"]["stall_mean_s"] / modes["sync"]["stall_mean_s"], 3)
    print(
        f"\n{args.model}, batch {args.batch_size} at {args.size} px, {args.steps} steps, "
        f"checkpoint every {args.every}, {args.repeats} run(s) per mode, report poll "
        f"{args.poll_s} s, storage {base} (server niceness {args.server_nice}"
        f"{', SCHED_IDLE' if args.server_idle else ''}):"
    )
    for mode, m in modes.items():
        ckpt = m["checkpoint_s_mean"]
        print(
            f"  {mode:5s}: baseline step {m['baseline_step_s']:.3f} s, stall per checkpoint "
            f"{m['stall_mean_s']:+.2f} s (each: {', '.join(f'{v:+.2f}' for v in m['stall_s'])}), "
            f"time/checkpoint_s {'n/a' if ckpt is None else f'{ckpt:.2f}'} s, checkpoint "
            f"{m['checkpoint_bytes'] / 2**20:.1f} MiB"
        )
    if ratio is not None:
        print(f"  async / sync stall: {ratio:.3f}")
    return {
        "model": args.model,
        "size": args.size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "every": args.every,
        "repeats": args.repeats,
        "poll_s": args.poll_s,
        "server_nice": args.server_nice,
        "server_idle": args.server_idle,
        "storage": base,
        "modes": modes,
        "async_over_sync_stall": ratio,
        "runs": runs,
    }


if __name__ == "__main__":
    main()
