"""The ranked trials for people: ``results.csv``, the console table, the convergence line and
``plot.png`` (the selection score against each swept key)."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from lejepa_ray.tune.ranking import DEFAULT_SELECT_BY, METRIC, TrialRow, selected
from lejepa_ray.tune.space import Dimension


def results_csv(rows: list[TrialRow], varied: list[Dimension]) -> str:
    """The ranked table as CSV: rank, trial, status, step, selection_score, loss, one column
    per swept key, knn_top1, linear_top1, rankme_backbone, rankme_projector, rel_change,
    descending, checkpoint."""
    out = io.StringIO()
    writer = csv.writer(out)
    keys = [d.key for d in varied]
    writer.writerow(
        [
            "rank",
            "trial",
            "status",
            "step",
            "selection_score",
            "loss",
            *keys,
            "knn_top1",
            "linear_top1",
            "rankme_backbone",
            "rankme_projector",
            "rel_change",
            "descending",
            "checkpoint",
        ]
    )
    for r in rows:
        writer.writerow(
            [
                r.rank,
                r.trial,
                r.status_text,
                r.step,
                r.selection_score,
                r.loss,
                *(r.params[k] for k in keys),
                _blank(r.knn_top1),
                _blank(r.linear_top1),
                _blank(r.rankme_backbone),
                _blank(r.rankme_projector),
                _blank(r.rel_change),
                r.descending,
                r.checkpoint or "",
            ]
        )
    return out.getvalue()


def _blank(value: float | None) -> Any:
    """An empty cell for what was not measured (None or NaN)."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def format_table(
    rows: list[TrialRow], varied: list[Dimension], select_by: str = DEFAULT_SELECT_BY
) -> str:
    """The ranked trials as an aligned text table for the console."""
    keys = [d.key for d in varied]
    probes = any(r.linear_top1 is not None for r in rows)
    rankme = any(not math.isnan(r.rankme_backbone) for r in rows)
    head = [
        "rank",
        "trial",
        "score",
        "loss",
        *(["rankme bb/proj"] if rankme else []),
        "Δloss",
        "step",
        *keys,
        *(["kNN", "linear"] if probes else []),
        "status",
    ]
    body = []
    for r in rows:
        cells = [str(r.rank), r.trial, f"{r.selection_score:.4f}", f"{r.loss:.4f}"]
        if rankme:
            cells.append(f"{cell(r.rankme_backbone, '.1f')}/{cell(r.rankme_projector, '.1f')}")
        cells += [
            cell(r.rel_change, "+.1%"),
            str(r.step),
            *(_short(r.params[k]) for k in keys),
        ]
        if probes:
            cells += [_pct(r.knn_top1), _pct(r.linear_top1)]
        note = ", still descending" if r.descending else ", loss rising" if r.rising else ""
        body.append([*cells, r.status_text + note])
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in [head, *body]
    ]
    metric = selected(select_by)
    return "\n".join(["", f"trials ranked by {metric.metric} ({metric.better} is better):", *lines])


def format_convergence(rows: list[TrialRow], window: int, tol: float) -> str:
    """One line: how many completed trials reached a plateau, and which did not."""
    done = [r for r in rows if r.completed and not math.isnan(r.rel_change)]
    if not done:
        return (
            f"convergence not measured: no completed trial ran two windows of {window} steps "
            "(loss.score_smoothing_steps)."
        )
    falling = [r.trial for r in done if r.descending]
    rising = [r.trial for r in done if r.rising]
    line = (
        f"convergence: {sum(r.plateau for r in done)} of {len(done)} completed trials on a "
        f"plateau (mean loss of the last {window} steps within {tol:.3g} of the {window} "
        "before, relative)"
    )
    if falling:
        line += (
            f"; still descending: {', '.join(falling)}. Ranking unconverged runs is not what "
            "the LeJEPA paper claims: give them more optim.steps"
        )
    if rising:
        line += f"; loss rising: {', '.join(rising)}"
    return line + "."


def cell(value: float, spec: str) -> str:
    """A number for the console, or ``-`` when it was not measured (NaN)."""
    return "-" if math.isnan(value) else format(value, spec)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def plot_png(rows: list[TrialRow], varied: list[Dimension], title: str) -> bytes:
    """PNG: the selection score of every trial against each swept key (log axis for
    log-uniform and wide numeric ranges; names on a categorical axis); completed trials
    filled, early-stopped ones hollow, the winner starred."""
    # lazy: matplotlib takes about a second to import, and the trial processes, which import
    # this module through sweep.py, never draw.
    from matplotlib.figure import Figure

    # lazy: as above, matplotlib: the trial processes never draw.
    from matplotlib.ticker import NullFormatter

    scored = [r for r in rows if not math.isnan(r.selection_score)]
    dims = varied or [Dimension("trial", "fixed", ())]
    # A Figure of its own rather than pyplot's: no process-wide backend to choose (a caller's
    # notebook keeps its own), no global figure to close.
    fig = Figure(figsize=(4.5 * len(dims), 4))
    axes = fig.subplots(1, len(dims), squeeze=False)
    for ax, dim in zip(axes[0], dims, strict=True):
        values = [r.params.get(dim.key, r.trial) if dim.key != "trial" else r.trial for r in scored]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        x: list[float]
        if len(numbers) == len(values):  # all numeric
            x = numbers
            if (
                numbers
                and min(numbers) > 0
                and (dim.sampler == "loguniform" or max(numbers) / min(numbers) >= 10)
            ):
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            labels = sorted({str(v) for v in values})
            x = [labels.index(str(v)) for v in values]
            ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        for xi, r in zip(x, scored, strict=True):
            ax.scatter(
                xi,
                r.selection_score,
                s=160 if r.rank == 1 else 36,
                marker="*" if r.rank == 1 else "o",
                facecolors="C0" if r.completed else "none",
                edgecolors="C0",
            )
        ax.set_xlabel(dim.key)
        ax.set_ylabel(METRIC)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: lower is better (★ winner, hollow: stopped early)")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    return out.getvalue()
