"""Where one training step of a config goes, component by component, on this machine.

One rank's share of a step of ``--config`` (default: the CPU quickstart), with the threads a
Ray Train worker gets (``scaling.cpus_per_worker``), timed piece by piece after warm-up:

- ``views``: decoding and cropping the rank's batch (what the Ray Data actors do per step);
- ``backbone fwd``, ``projector fwd``, ``loss fwd`` (prediction + SIGReg), ``backward``,
  ``optimizer``: the step itself;
- ``allreduce``: one gloo all-reduce of all gradients between ``scaling.num_workers``
  processes (an upper bound on DDP's cost: DDP overlaps its buckets with the backward pass).

What is left of a real run's ``time/step_s`` (its progress line) beyond these is Ray's share:
``benchmarks/train_step.py`` measures Ray Train against torchrun on the same loop. Prints one
table (median ms per step, share of the total, the img/s it implies), then one JSON line.

    python benchmarks/step_profile.py [--config FILE] [--steps 20] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributed as dist


def _encoded_batch(cfg, n: int) -> tuple[list[bytes], list[str]]:
    from lejepa_ray.data.sources import LocalSource

    source = LocalSource(cfg.data)
    rows = [source[i % len(source)] for i in range(n)]
    return [r["image"] for r in rows], [r["key"] for r in rows]


def _allreduce_rank(rank: int, world: int, numel: int, steps: int, port: int) -> float:
    """One rank of the all-reduce timing (run in its own process): median seconds."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    grads = torch.randn(numel)
    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        dist.all_reduce(grads)
        if i >= 3:
            times.append(time.perf_counter() - start)
    dist.destroy_process_group()
    return statistics.median(times)


def allreduce_seconds(numel: int, world: int, steps: int) -> float:
    """Median seconds of one gloo all-reduce of ``numel`` float32 values over ``world``
    local processes (this script, rerun once per rank)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--allreduce-rank",
                str(r),
                str(world),
                str(numel),
                str(steps),
                str(port),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(
            f"the all-reduce processes failed: exit codes {[p.returncode for p in procs]}"
        )
    return float(outs[0].strip().splitlines()[-1])


def profile(cfg, steps: int) -> dict[str, float]:
    """Median seconds per step of each component, for one rank."""
    from lejepa_ray.config import scaled_lr
    from lejepa_ray.data.views import ViewMaker
    from lejepa_ray.model.encoder import LeJEPAEncoder, resolve
    from lejepa_ray.objective.loss import lejepa_loss
    from lejepa_ray.train.optim import build_optimizer

    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    v = cfg.data.views
    spec = resolve(cfg.model, v.global_size, v.local_size if v.local_views else None)
    encoder = LeJEPAEncoder(spec, cfg.model)
    optimizer = build_optimizer(encoder, cfg.optim, scaled_lr(cfg))
    images, keys = _encoded_batch(cfg, cfg.scaling.batch_size)
    maker = ViewMaker(v, cfg.data.seed, cfg.data.max_pixels)
    parts: dict[str, list[float]] = {
        k: []
        for k in ("views", "backbone fwd", "projector fwd", "loss fwd", "backward", "optimizer")
    }
    encoder.train()
    for step in range(steps + 3):
        t = [time.perf_counter()]
        _, glob, loc, _, *_ = maker.batch(images, keys, epoch=step)
        glob, loc = torch.from_numpy(glob), torch.from_numpy(loc) if v.local_views else None
        t.append(time.perf_counter())
        feats = [encoder.backbone(encoder._pixels(glob, spec.global_size))]
        if loc is not None:
            feats.append(encoder.backbone(encoder._pixels(loc, spec.local_size)))
        t.append(time.perf_counter())
        b = glob.shape[0]
        emb = torch.cat([f.view(b, -1, f.shape[-1]) for f in feats], dim=1).flatten(0, 1)
        z = encoder.projector(emb).view(b, -1, cfg.model.projector_dim).transpose(0, 1)
        t.append(time.perf_counter())
        out = lejepa_loss(
            z[: v.global_views],
            z,
            step,
            cfg.loss.lam,
            num_slices=cfg.loss.num_slices,
            validate=False,
        )
        t.append(time.perf_counter())
        out.total.backward()
        t.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        if step >= 3:
            for name, a, b_ in zip(parts, t, t[1:], strict=False):
                parts[name].append(b_ - a)
    seconds = {k: statistics.median(x) for k, x in parts.items()}
    numel = sum(p.numel() for p in encoder.parameters())
    if cfg.scaling.max_workers > 1:
        seconds["allreduce"] = allreduce_seconds(numel, cfg.scaling.max_workers, steps)
    return seconds


def main(argv: list[str] | None = None) -> int:
    from lejepa_ray.config import QUICKSTART, load_config

    if argv is None and sys.argv[1:2] == ["--allreduce-rank"]:  # one rank of allreduce_seconds
        print(_allreduce_rank(*(int(x) for x in sys.argv[2:7])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="pretrain config (default: quickstart)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config or QUICKSTART, [*args.overrides, f"storage_path={tmp}"])
    seconds = profile(cfg, args.steps)
    total = sum(seconds.values())
    batch, world = cfg.scaling.batch_size, cfg.scaling.max_workers
    print(
        f"{cfg.model.name}, {batch} images per rank x {world} rank(s), "
        f"{int(cfg.scaling.cpus_per_worker)} thread(s) per rank; median of {args.steps} steps"
    )
    print(f"  {'component':<15}{'ms/step':>9}{'share':>8}")
    for name, s in seconds.items():
        print(f"  {name:<15}{1e3 * s:>9.1f}{s / total:>8.0%}")
    compute = total - seconds["views"]
    print(f"  {'total':<15}{1e3 * total:>9.1f}")
    print(
        f"implied: {batch * world / compute:.0f} img/s if views are made on other cores, "
        f"{batch * world / total:.0f} img/s if each rank's core also makes its views"
    )
    print(
        json.dumps(
            {
                "model": cfg.model.name,
                "batch_per_rank": batch,
                "ranks": world,
                "ms": {k: round(1e3 * s, 2) for k, s in seconds.items()},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
