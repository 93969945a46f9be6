"""The label-free metrics of a sweep's trials, a trial's row in the results, and their order.

Label-free metrics of each trial (:data:`LABEL_FREE`, each with its direction):

- ``selection_score/smoothed``: the training loss over λ^α, averaged over the last
  ``loss.score_smoothing_steps`` steps; lower is better (the LeJEPA paper finds it ranks runs as
  their linear-probe accuracy does);
- ``loss/smoothed``, the raw loss; lower is better;
- ``rankme/backbone`` and ``rankme/projector`` (:mod:`lejepa_ray.train.rankme`), the effective rank
  of the embeddings of a fixed held-out batch at the trial's last checkpoint; higher is better.

``--select_by`` picks the one that ranks the trials and names the winner, and that ASHA
compares trials on at the rungs ``grace, grace·r, grace·r², ...`` steps, stopping those in the
worse ``1 − 1/r`` (RankMe is then computed at every report, ``logging.rankme_every_report``).
Each trial also reports ``loss/rel_change``, the relative change of its mean loss over its last
window against the window before; a trial whose loss still falls by more than ``plateau_tol``
is flagged as still descending, because ranking unconverged runs is not what the paper claims.

:func:`rank` turns Tune's results into rows (:class:`TrialRow`), best first.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lejepa_ray import runs
from lejepa_ray.config import PretrainConfig, with_overrides
from lejepa_ray.tune.space import Dimension, overrides

METRIC = "selection_score/smoothed"
"""The selection score (lower is better); present in every report."""
REL_CHANGE = "loss/rel_change"


@dataclass(frozen=True, kw_only=True)
class LabelFree:
    """A label-free metric a trial reports, and which way is better."""

    column: str
    """Its ``TrialRow`` field and ``results.csv`` column."""
    metric: str
    """The reported metric it is read from."""
    lower_is_better: bool
    label: str

    @property
    def better(self) -> str:
        """``lower`` or ``higher``: which way is better."""
        return "lower" if self.lower_is_better else "higher"

    @property
    def mode(self) -> str:
        """``min`` or ``max``: the mode Ray Tune's schedulers and searchers take for it."""
        return "min" if self.lower_is_better else "max"


LABEL_FREE = (
    LabelFree(column="selection_score", metric=METRIC, lower_is_better=True, label="loss / λ^α"),
    LabelFree(column="loss", metric="loss/smoothed", lower_is_better=True, label="raw loss"),
    LabelFree(
        column="rankme_backbone",
        metric="rankme/backbone",
        lower_is_better=False,
        label="RankMe (backbone)",
    ),
    LabelFree(
        column="rankme_projector",
        metric="rankme/projector",
        lower_is_better=False,
        label="RankMe (projector)",
    ),
)

SELECT_BY = {"rankme": "rankme_backbone", "score": "selection_score"}
"""``--select_by`` choices and the metric each ranks by."""
DEFAULT_SELECT_BY = "rankme"
"""What our measurements support (docs/sweeps.md: the 12-trial digits experiment)."""


def selected(select_by: str) -> LabelFree:
    """The label-free metric ``--select_by select_by`` ranks by."""
    return next(m for m in LABEL_FREE if m.column == SELECT_BY[select_by])


class TrialStatus(enum.Enum):
    """How a trial ended. Files and the console show :attr:`TrialRow.status_text`, the text
    ``results.csv`` and ``validation.json`` have always held, not these values."""

    COMPLETED = "completed"
    """It ran all the ``optim.steps`` of its config."""
    STOPPED = "stopped"
    """ASHA stopped it at a rung."""
    FAILED = "error"
    """It raised (:attr:`TrialRow.error`)."""


@dataclass(kw_only=True)
class TrialRow:
    """One trial in the ranked results (what ``results.csv`` holds)."""

    rank: int = 0
    """1 for the best; 0 until :func:`rank` has ordered the rows."""
    trial: str
    status: TrialStatus
    step: int
    """Its last reported optimizer step."""
    selection_score: float
    """The smoothed score of its last report (lower is better)."""
    loss: float
    """The smoothed raw training loss of its last report."""
    params: dict[str, Any]
    """The values it drew from the space (dotted keys)."""
    checkpoint: str | None
    knn_top1: float | None = None
    """Top-1 accuracy (a fraction) of the kNN probe on its last checkpoint; None: not probed."""
    linear_top1: float | None = None
    """Top-1 accuracy (a fraction) of the linear probe on its last checkpoint."""
    rankme_backbone: float = math.nan
    """RankMe of the backbone features at its last checkpoint (higher is better)."""
    rankme_projector: float = math.nan
    """RankMe of the projector outputs at its last checkpoint."""
    rel_change: float = math.nan
    """Relative change of its mean loss over the last window against the window before
    (negative: still falling); NaN when it ran fewer than two windows."""
    descending: bool = False
    """Its loss still fell by more than the sweep's ``plateau_tol`` over its last window."""
    rising: bool = False
    """Its loss rose by more than ``plateau_tol`` over its last window (not a plateau either)."""
    error: str = ""
    """The last line of its error (at most 200 characters) when it failed."""

    @property
    def plateau(self) -> bool:
        """Its loss changed by at most ``plateau_tol`` over its last window."""
        return not (math.isnan(self.rel_change) or self.descending or self.rising)

    @property
    def completed(self) -> bool:
        return self.status is TrialStatus.COMPLETED

    @property
    def stopped(self) -> bool:
        return self.status is TrialStatus.STOPPED

    @property
    def failed(self) -> bool:
        return self.status is TrialStatus.FAILED

    @property
    def status_text(self) -> str:
        """``completed``, ``stopped at step N`` or ``error: <its last line>``: the status as
        the table, ``results.csv`` and ``validation.json`` write it."""
        if self.stopped:
            return f"stopped at step {self.step}"
        if self.failed:
            return f"error: {self.error}"
        return "completed"


class Results(Protocol):
    """What :func:`rank` reads: Tune's ``ResultGrid`` (indexed, not an ``Iterable``) or a list
    of results, each with ``metrics``, ``config``, ``error`` and ``path``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


def rank(
    grid: Results,
    base: PretrainConfig,
    space: list[Dimension],
    runs_dir: str,
    select_by: str = DEFAULT_SELECT_BY,
    plateau_tol: float = 0.05,
) -> list[TrialRow]:
    """The trials of a Tune ``ResultGrid`` as rows: completed ones by the ``select_by`` metric
    (best first, in its direction), then those ASHA stopped (the same way), then failed ones.
    Trial ``T``'s checkpoints are read from ``runs_dir/T``; a trial whose loss changed by more
    than ``plateau_tol`` (a fraction) over its last window is flagged."""
    keys = [d.key for d in space]
    rows = []
    for i in range(len(grid)):  # ResultGrid defines no __iter__: see Results
        result = grid[i]
        metrics = result.metrics or {}
        params = {k: (result.config or {}).get(k) for k in keys}
        trial = metrics.get("trial_id") or Path(result.path).name
        step = int(metrics.get("step", 0))
        steps = with_overrides(base, overrides(params)).optim.steps
        error = ""
        if result.error is not None:
            status, error = TrialStatus.FAILED, _last_line(result.error)
        elif step >= steps:
            status = TrialStatus.COMPLETED
        else:
            status = TrialStatus.STOPPED
        latest = runs.latest_checkpoint(f"{runs_dir}/{trial}")
        # The label-free values of the checkpoint that is probed, so that both describe the
        # same weights: for a completed trial its final report, for one ASHA stopped its last
        # checkpoint (RankMe exists only there), else its last report.
        at = {**metrics, **latest.metrics} if latest else metrics
        rel_change = _number(at.get(REL_CHANGE))
        rows.append(
            TrialRow(
                trial=trial,
                status=status,
                step=step,
                selection_score=_number(at.get(METRIC)),
                loss=_number(at.get("loss/smoothed")),
                params=params,
                checkpoint=latest.uri if latest else None,
                knn_top1=metrics.get("probe/knn_top1"),
                linear_top1=metrics.get("probe/linear_top1"),
                rankme_backbone=_number(at.get("rankme/backbone")),
                rankme_projector=_number(at.get("rankme/projector")),
                rel_change=rel_change,
                descending=rel_change < -plateau_tol,
                rising=rel_change > plateau_tol,
                error=error,
            )
        )
    metric = selected(select_by)
    column, lower = metric.column, metric.lower_is_better

    def order(row: TrialRow) -> tuple:
        group = 0 if row.completed else 2 if row.failed else 1
        value = getattr(row, column)
        missing = math.isnan(value)
        return group, missing, 0.0 if missing else value if lower else -value, row.trial

    rows.sort(key=order)
    for i, row in enumerate(rows, 1):
        row.rank = i
    return rows


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _last_line(error: BaseException) -> str:
    """The last line of an error's message, at most 200 characters; its type when it has none."""
    lines = str(error).strip().splitlines()
    return lines[-1][:200] if lines else type(error).__name__
