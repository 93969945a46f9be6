"""The loss and RankMe curves of every trial of a finished sweep, coloured by λ.

Reads each trial's TensorBoard events under ``<sweep>/runs/<trial>/tensorboard`` and its row of
``<sweep>/results.csv``; writes ``<sweep>/curves.png`` (``loss/smoothed``, ``loss/sigreg``,
``loss/prediction`` and ``rankme/backbone`` against the step, one line per trial) and prints
one line per trial: λ, the other swept keys, the final losses, the relative change over the
last window, RankMe and the probes. It is what ``docs/sweeps.md`` uses to tell an unconverged
sweep from one whose metric does not rank.

    python benchmarks/sweep_curves.py SWEEP_DIR
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

TAGS = ("loss/smoothed", "loss/prediction", "loss/sigreg", "rankme/backbone")


def curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of each of :data:`TAGS` logged by the run in ``run_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    have = set(events.Tags()["scalars"])
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in TAGS if t in have}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args()
    with (args.sweep_dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{args.sweep_dir}/results.csv has no trials.")
    fixed = {"rank", "trial", "status", "step", "checkpoint", "descending"}
    measured = {"selection_score", "loss", "knn_top1", "linear_top1", "rankme_backbone"}
    measured |= {"rankme_projector", "rel_change"}
    swept = [k for k in rows[0] if k not in fixed | measured]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.colors
    import matplotlib.pyplot as plt

    lams = [float(r["loss.lam"]) for r in rows] if "loss.lam" in swept else []
    norm = matplotlib.colors.LogNorm(min(lams), max(lams)) if lams else None
    fig, axes = plt.subplots(1, len(TAGS), figsize=(4.5 * len(TAGS), 4), layout="constrained")
    for r in sorted(rows, key=lambda r: float(r.get("loss.lam") or 0)):
        series = curves(args.sweep_dir / "runs" / r["trial"])
        colour = plt.cm.viridis(norm(float(r["loss.lam"]))) if norm else None
        for ax, tag in zip(axes, TAGS, strict=True):
            if tag in series:
                steps, values = zip(*series[tag], strict=True)
                ax.plot(steps, values, color=colour, lw=1.2, alpha=0.85)
        last = {t: s[-1][1] for t, s in series.items() if s}
        print(
            "  ".join(
                [
                    r["trial"],
                    *(f"{k}={r[k]}" for k in swept),
                    f"loss {last.get('loss/smoothed', math.nan):.4f}",
                    f"pred {last.get('loss/prediction', math.nan):.4f}",
                    f"sigreg {last.get('loss/sigreg', math.nan):.3f}",
                    f"Δloss {r['rel_change'] or '-'}",
                    f"rankme {r['rankme_backbone'] or '-'}/{r['rankme_projector'] or '-'}",
                    f"kNN {r['knn_top1'] or '-'}",
                    f"linear {r['linear_top1'] or '-'}",
                ]
            )
        )
    for ax, tag in zip(axes, TAGS, strict=True):
        ax.set_xlabel("step")
        ax.set_ylabel(tag)
        ax.grid(alpha=0.3)
        if tag.startswith("loss/sigreg"):
            ax.set_yscale("log")
    if norm:
        sm = plt.cm.ScalarMappable(norm=norm, cmap="viridis")
        fig.colorbar(sm, ax=axes.tolist(), label="λ (loss.lam)")
    out = args.sweep_dir / "curves.png"
    fig.savefig(out, dpi=90)
    print(f"curves: {out}")


if __name__ == "__main__":
    main()
