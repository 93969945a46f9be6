"""What a recipe learns: pretrain under a step budget, then probe on a held-out split.

For each seed, one whole ``lejepa-ray pretrain`` run (the embedded Ray instance, the Ray Data
stream, Ray Train workers, the final checkpoint), then the run's own probes: linear and kNN
top-1 on images it never trained on, for the trained backbone, the same backbone at random
initialization, and raw pixels at the same size, all three under one protocol (standardized
with the bank's statistics; same probes, same split: ``evaluation.probe.PREPARATION``).

The held-out split: the config runs on ``data.split=train`` (set here unless an override says
otherwise) and the probes are fitted on it and scored on ``data.split=val``, a fixed 20% of the
source chosen by a hash of each sample's key. Runs are deterministic given the seed, apart from
Ray Data's block order.

    python benchmarks/quality.py [--config FILE] [--seeds 0 1 2] [--steps N] [key=value ...]

The default is the CPU quickstart (``platform/lejepa_ray/configs/quickstart.yaml``). Prints one
table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

FEATURES = ("trained", "init", "raw")
LABELS = {"trained": "trained backbone", "init": "random init", "raw": "raw pixels"}


def _runs(args: argparse.Namespace) -> list[dict]:
    from lejepa_ray.config import QUICKSTART, load_config
    from lejepa_ray.launch.driver import run

    config = args.config or QUICKSTART
    out, root = [], tempfile.mkdtemp(prefix="lejepa-quality-")
    for seed in args.seeds:
        budget = [f"optim.steps={args.steps}"] if args.steps else []
        cfg = load_config(
            config,
            [
                "data.split=train",
                *budget,
                *args.overrides,
                f"seed={seed}",
                f"data.seed={seed}",
                f"name=quality-seed{seed}",
                f"storage_path={root}",
            ],
        )
        start = time.perf_counter()
        result = run(cfg)
        wall = time.perf_counter() - start
        if result.probe is None:
            raise SystemExit(
                f"{config}: the run has no probe (unlabelled data, or "
                "probe.knn=false); the quality benchmark needs labels."
            )
        report = result.probe
        images = cfg.optim.steps * cfg.scaling.global_batch
        out.append(
            {
                "seed": seed,
                "steps": cfg.optim.steps,
                "wall_s": round(wall, 1),
                "train_s": round(result.train_seconds, 1),
                # Over the whole fit (worker start-up and the pipeline's first batches included),
                # and in the last logging window (steady state).
                "train_images_per_s": round(images / result.train_seconds, 1),
                "last_window_images_per_s": round(
                    result.metrics.get("throughput/images_per_s", float("nan")), 1
                ),
                "protocol": report.protocol,
                "preparation": report.preparation,
                "bank": report.bank,
                "queries": report.queries,
                **{
                    f"{name}_{probe}": getattr(getattr(report, name), f"{probe}_top1")
                    for name in FEATURES
                    for probe in ("knn", "linear")
                },
            }
        )
    return out


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _table(runs: list[dict]) -> str:
    first = runs[0]
    lines = [
        f"held-out probes ({first['protocol']}: fitted on {first['bank']}, scored on "
        f"{first['queries']} images), {len(runs)} seed(s): mean ± std over seeds",
        f"  {'features':<18}{'kNN top-1':>16}{'linear top-1':>16}",
    ]
    for name in FEATURES:
        cells = [_spread([r[f"{name}_{p}"] for r in runs]) for p in ("knn", "linear")]
        lines.append(f"  {LABELS[name]:<18}{cells[0]:>16}{cells[1]:>16}")
    lines.append(
        f"  {'seed':<6}{'steps':>6}{'wall s':>9}{'train s':>9}{'img/s':>8}{'kNN':>8}{'linear':>8}"
    )
    for r in runs:
        lines.append(
            f"  {r['seed']:<6}{r['steps']:>6}{r['wall_s']:>9}{r['train_s']:>9}"
            f"{r['train_images_per_s']:>8}{r['trained_knn']:>8.3f}"
            f"{r['trained_linear']:>8.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="pretrain config (default: quickstart)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="one run per seed (seed and data.seed)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="step budget (default: the config's optim.steps)"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    runs = _runs(args)
    print(_table(runs))
    print(json.dumps(_summary(runs)))
    return 0


def _summary(runs: list[dict]) -> dict:
    """The runs, with the mean and standard deviation over seeds of every figure."""
    summary: dict = {"runs": runs}
    for key in runs[0]:
        if key.endswith(("_knn", "_linear", "_s")) and len(runs) > 1:
            values = [r[key] for r in runs]
            summary[f"{key}_mean"] = round(statistics.mean(values), 4)
            summary[f"{key}_std"] = round(statistics.stdev(values), 4)
    return summary


if __name__ == "__main__":
    sys.exit(main())
