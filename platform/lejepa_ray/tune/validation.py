"""Checking the label-free ranking against labels (``--validate_with_labels``).

Every trial's last checkpoint is probed (completed trials in their trial function, the ones
ASHA stopped by the driver afterwards, :func:`probe_stopped`); then Spearman ρ, with a
bootstrap interval, of every label-free metric against probe accuracy (:func:`validate`), for
``validation.json``, the console (:func:`format_validation`) and one scatter plot per metric
(:func:`validation_plots`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, cast

import numpy as np

from lejepa_ray.errors import CheckpointError
from lejepa_ray.evaluation.frozen import evaluate
from lejepa_ray.launch.probes import probe_of
from lejepa_ray.tune.ranking import DEFAULT_SELECT_BY, LABEL_FREE, TrialRow, selected

PROBES = ("linear_top1", "knn_top1")


def probe_trial(path: str, data: str, val_data: str | None = None) -> dict[str, float]:
    """``probe/knn_top1`` and ``probe/linear_top1`` (fractions) of a trial's checkpoint at
    ``path`` (local or a URI), fitted on ``data`` and scored on ``val_data`` (None: a hash split
    of ``data``). Not the driver's ``probe_checkpoint``, which probes a run by its config."""
    result = evaluate(path, data, "both", val_data=val_data)
    assert result.knn_top1 is not None and result.linear_top1 is not None  # "both" runs both
    return {"probe/knn_top1": result.knn_top1, "probe/linear_top1": result.linear_top1}


def probe_stopped(
    rows: list[TrialRow],
    data: str,
    val_data: str | None = None,
    print_fn: Callable[[str], None] = print,
) -> None:
    """Probe the last checkpoint of every trial ASHA stopped (completed trials probe
    themselves), so that validation is not biased toward the survivors; fills the rows."""
    todo = [r for r in rows if r.stopped and r.checkpoint and r.linear_top1 is None]
    for i, row in enumerate(todo, 1):
        assert row.checkpoint is not None  # todo holds rows with one
        during = probe_of(row.checkpoint)  # probed during training, on the same data
        if during is not None and "probe/linear_top1" in during:
            print_fn(f"stopped trial {row.trial}: probed during training at {row.checkpoint}")
            row.knn_top1, row.linear_top1 = during["probe/knn_top1"], during["probe/linear_top1"]
            continue
        print_fn(f"probing stopped trial {row.trial} ({i}/{len(todo)}): {row.checkpoint}")
        try:
            probes = probe_trial(row.checkpoint, data, val_data)
        except (CheckpointError, OSError) as e:  # one unreadable checkpoint: the rest go on
            print_fn(f"  not probed, left out of the validation: {e}")
            continue
        row.knn_top1, row.linear_top1 = probes["probe/knn_top1"], probes["probe/linear_top1"]


def spearman_interval(
    x: list[float], y: list[float], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Spearman ρ of ``x`` and ``y`` (one value per trial) and its percentile bootstrap
    interval at ``level``: the trials are resampled with replacement ``resamples`` times
    (seeded), and resamples in which either side is constant (ρ undefined) are dropped.

    Returns:
        (ρ, low, high); NaN where ρ is undefined (fewer than 3 trials, or a constant side).
    """
    # lazy: scipy.stats takes one to two seconds to import, and only a sweep with
    # --validate_with_labels needs it.
    from scipy.stats import spearmanr

    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(xs) < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return math.nan, math.nan, math.nan
    rho = float(spearmanr(xs, ys).statistic)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        i = rng.integers(0, len(xs), len(xs))
        if np.ptp(xs[i]) > 0 and np.ptp(ys[i]) > 0:
            draws.append(spearmanr(xs[i], ys[i]).statistic)
    if not draws:
        return rho, math.nan, math.nan
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return rho, float(low), float(high)


def validate(rows: list[TrialRow], select_by: str = DEFAULT_SELECT_BY) -> dict[str, Any]:
    """Spearman ρ, with a bootstrap 95% interval, of every label-free metric against each
    probe's accuracy, over the trials with probe results: completed and early-stopped ones
    (leaving the stopped ones out would bias ρ toward the survivors), and, in
    ``completed_only``, over the completed ones alone (stopped trials trained fewer steps,
    which by itself can make the metrics and the accuracy agree).

    ``rho[metric~probe]`` is the plain ρ; ``agreement[metric~probe]`` is ρ signed so that +1
    means the metric, read in its own direction (lower score, higher RankMe), ranks the trials
    exactly as the probe does. What is undefined (too few trials, a constant side) is None, so
    the result is strict JSON."""
    probed = [r for r in rows if r.linear_top1 is not None and not r.failed]
    out: dict[str, Any] = {
        "trials": len(probed),
        "completed": sum(r.completed for r in probed),
        "stopped": sum(r.stopped for r in probed),
        "still_descending": [r.trial for r in probed if r.descending],
        "select_by": select_by,
    }
    if len(probed) < 3:
        out["note"] = f"Spearman ρ needs at least 3 trials with probes; got {len(probed)}."
        return out
    out.update(_correlations(probed))
    out["completed_only"] = _correlations([r for r in probed if r.completed])
    metric = selected(select_by)
    column, lower = metric.column, metric.lower_is_better
    done = [r for r in probed if r.completed and not math.isnan(getattr(r, column))]
    if done:
        pick = (min if lower else max)(done, key=lambda r: getattr(r, column))
        out["label_free_pick"] = {"trial": pick.trial, "linear_top1": pick.linear_top1}
    best = max(probed, key=lambda r: cast(float, r.linear_top1))  # probed: not None
    out["best_by_labels"] = {"trial": best.trial, "linear_top1": best.linear_top1}
    out["rows"] = [_json_row(r) for r in probed]
    return out


def _correlations(rows: list[TrialRow]) -> dict[str, dict[str, Any]]:
    """``rho``, ``interval95``, ``agreement`` and ``n`` for every metric~probe pair."""
    out: dict[str, dict[str, Any]] = {"rho": {}, "interval95": {}, "agreement": {}, "n": {}}
    for metric in LABEL_FREE:
        have = [r for r in rows if not math.isnan(getattr(r, metric.column))]
        sign = -1.0 if metric.lower_is_better else 1.0
        for probe in PROBES:
            key = f"{metric.column}~{probe}"
            rho, low, high = spearman_interval(
                [getattr(r, metric.column) for r in have], [getattr(r, probe) for r in have]
            )
            out["rho"][key] = _finite(rho)
            out["interval95"][key] = [_finite(low), _finite(high)]
            out["agreement"][key] = _finite(sign * rho)
            out["n"][key] = len(have)
    return out


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def _json_row(row: TrialRow) -> dict[str, Any]:
    """A row of ``validation.json``, in the format it always had: strict JSON (NaN is null),
    the status as its text, no ``error`` (probed trials have none)."""
    out = {k: _finite(v) if isinstance(v, float) else v for k, v in asdict(row).items()}
    out["status"] = row.status_text
    del out["error"]
    return out


def format_validation(v: dict[str, Any]) -> str:
    if "note" in v:
        return v["note"]
    lines = [
        f"\nlabel-free metrics against probe accuracy over {v['trials']} trials "
        f"({v['completed']} completed, {v['stopped']} stopped early); Spearman ρ [bootstrap "
        "95% interval]; agreement = ρ in the metric's own direction (+1: ranks exactly as "
        "the probe):"
    ]
    for metric in LABEL_FREE:
        cells = []
        for probe, name in zip(PROBES, ("linear", "kNN"), strict=True):
            key = f"{metric.column}~{probe}"
            rho, (low, high) = v["rho"][key], v["interval95"][key]
            if rho is None:
                cells.append(f"vs {name} -")
                continue
            interval = "[-]" if low is None else f"[{low:+.2f}, {high:+.2f}]"
            cells.append(f"vs {name} ρ {rho:+.2f} {interval} agreement {v['agreement'][key]:+.2f}")
        n = v["n"][f"{metric.column}~linear_top1"]
        lines.append(
            f"  {metric.label:19s} ({metric.better} is better, n={n}): " + "; ".join(cells)
        )
    if v["stopped"]:
        only = v["completed_only"]
        cells = [
            f"{m.label} {_signed(only['agreement'][f'{m.column}~linear_top1'])}" for m in LABEL_FREE
        ]
        lines.append(
            f"  completed trials only (n={v['completed']}), agreement with linear: "
            + ", ".join(cells)
        )
    best = v["best_by_labels"]
    pick = v.get("label_free_pick")
    chosen = (
        f"picked without labels (--select_by {v['select_by']}): {pick['trial']} (linear "
        f"{pick['linear_top1']:.3f}); "
        if pick
        else ""
    )
    lines.append(f"  {chosen}best by labels: {best['trial']} (linear {best['linear_top1']:.3f})")
    if v["still_descending"]:
        lines.append(
            f"  {len(v['still_descending'])} of these trials were still descending: their ρ "
            "ranks unconverged runs."
        )
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def validation_plots(rows: list[TrialRow], title: str) -> dict[str, bytes]:
    """One PNG per label-free metric (keyed by its column): linear and kNN top-1 against the
    metric, every probed trial coloured by its λ (log scale) when λ was swept; faded diamonds
    for trials stopped early."""
    # lazy: as in report.plot_png, the trial processes import this module and never draw.
    from matplotlib.colors import LogNorm

    # lazy: as above, matplotlib: the trial processes never draw.
    from matplotlib.figure import Figure

    probed = [r for r in rows if r.linear_top1 is not None and not r.failed]
    lams = [r.params.get("loss.lam") for r in probed]
    positive = [x for x in lams if isinstance(x, int | float) and x > 0]
    by_lam = len(positive) == len(lams) and len(set(lams)) > 1
    norm = LogNorm(min(positive), max(positive)) if by_lam else None
    out = {}
    for metric in LABEL_FREE:
        have = [r for r in probed if not math.isnan(getattr(r, metric.column))]
        if not have:
            continue
        fig = Figure(figsize=(10, 4), layout="constrained")  # not pyplot's: see report.plot_png
        axes = fig.subplots(1, 2, squeeze=False)
        for ax, probe, name in zip(axes[0], PROBES, ("linear", "kNN"), strict=True):
            x = [getattr(r, metric.column) for r in have]
            y = [getattr(r, probe) for r in have]
            done = [r.completed for r in have]
            for filled in (True, False):
                idx = [i for i, d in enumerate(done) if d == filled]
                if not idx:
                    continue
                if by_lam:
                    lam = [have[i].params["loss.lam"] for i in idx]
                    kwargs: dict[str, Any] = dict(c=lam, cmap="viridis", norm=norm)
                else:
                    kwargs = dict(c="C0")
                points = ax.scatter(
                    [x[i] for i in idx],
                    [y[i] for i in idx],
                    s=48,
                    marker="o" if filled else "D",
                    edgecolors="k",
                    linewidths=0.6 if filled else 1.2,
                    alpha=1.0 if filled else 0.5,
                    **kwargs,
                )
            ax.set_xlabel(f"{metric.metric} ({metric.better} is better)")
            ax.set_ylabel(f"{name} top-1")
            ax.grid(alpha=0.3)
        if by_lam:
            fig.colorbar(points, ax=axes[0].tolist(), label="λ (loss.lam)")
        fig.suptitle(f"{title}: {metric.label} against the probes (diamonds: stopped early)")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        out[metric.column] = buf.getvalue()
    return out
