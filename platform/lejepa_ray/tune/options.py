"""What a sweep runs (:class:`SweepOptions`, the options of ``lejepa_ray.sweep`` and of
``lejepa-ray sweep``), and the checks of those options, the trials' base config and the search
space, all before Ray starts (:func:`check`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from lejepa_ray.config import PretrainConfig, check_run, dotlist, resolve_config, with_overrides
from lejepa_ray.errors import ConfigError, check_field
from lejepa_ray.tune.ranking import DEFAULT_SELECT_BY, SELECT_BY
from lejepa_ray.tune.space import Dimension, check_space, load_space, overrides

SCHEDULERS = ("asha", "fifo")
SEARCHES = ("random", "optuna")
# Keys a trial's config gets from the sweep itself.
_RESERVED = ("name", "storage_path")


@dataclass
class SweepOptions:
    """Run one pretraining per trial (a TorchTrainer per Tune trial), rank the trials without
    labels (``select_by``), flag trials whose loss is still falling, write ``results.csv`` and
    ``plot.png``, and export the winner's backbone. Rerunning with the same ``name`` resumes an
    interrupted sweep."""

    space: str
    """Search space YAML (``tune_spaces/*.yaml``)."""
    config: PretrainConfig | str | None = None
    """The pretrain config every trial starts from (then ``overrides``, then the space): a
    config object or a YAML file. None: the packaged CPU quickstart."""
    overrides: list[str] = field(default_factory=list)
    """Dotted ``key=value`` overrides for every trial; ``storage_path`` places the sweep."""
    name: str | None = None
    """Sweep directory under ``storage_path``; rerunning with the same name resumes it.
    None: ``sweep-<space>-<YYYYmmdd-HHMMSS>``."""
    samples: int = 4
    """Trials drawn from the space (times the combinations of its ``grid`` keys)."""
    scheduler: str = "asha"
    """``asha`` (early stopping by the ``select_by`` metric) or ``fifo`` (every trial runs all
    its steps)."""
    search: str = "random"
    """``random`` (Tune's variant generator) or ``optuna`` (TPE; the ``optuna`` extra)."""
    concurrent: int = 1
    """Trials running at once; each needs its config's workers (``scaling.*``) and one CPU
    for its driver."""
    grace_steps: int | None = None
    """ASHA's first rung in optimizer steps. None: a quarter of ``optim.steps``."""
    reduction_factor: int = 2
    """ASHA keeps the best ``1/reduction_factor`` of the trials at each rung."""
    search_seed: int = 0
    """Seed of the search (which values are drawn)."""
    select_by: str = DEFAULT_SELECT_BY
    """What ranks the trials and picks the winner: ``rankme`` (``rankme/backbone``, higher is
    better; the default, because it ranked our 12-trial digits sweep best, docs/sweeps.md) or
    ``score`` (``selection_score/smoothed`` = loss / λ^α, lower is better). ASHA stops trials
    by it too, so with ``rankme`` every report computes RankMe (``logging.rankme_every_report``)."""
    plateau_tol: float = 0.05
    """A trial whose mean loss over its last ``loss.score_smoothing_steps`` steps is more than
    this fraction below that of the window before is flagged as still descending."""
    validate_with_labels: str | None = None
    """Labelled data (``digits``, a folder or shards) to probe each trial's last checkpoint on
    (early-stopped trials too), then report Spearman ρ of every label-free metric against probe
    accuracy, with bootstrap 95% intervals. None: no probes."""
    val_data: str | None = None
    """Labelled data the probes are scored on (``digits:val``, a ``val/`` folder); None: a hash
    80/20 split of ``validate_with_labels``."""
    export_winner: bool = True
    """Export the best trial's backbone to ``<sweep>/winner`` (local or object storage)."""
    verbose: bool = False
    """Ray Tune's own console: its status table every 30 s, every trial's output with Ray's
    ``(pid=...)`` prefixes, Ray's logs. Off: a line per trial start, end, early stop and
    failure, then the ranked table; each trial's output stays in its run directory's logs
    and Ray's session logs."""

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("scheduler", self.scheduler, SCHEDULERS),
            ("search", self.search, SEARCHES),
            ("select_by", self.select_by, SELECT_BY),
        ):
            check_field(value in choices, name, value, f"one of {', '.join(choices)}")
        for name, count, low in (
            ("samples", self.samples, 1),
            ("concurrent", self.concurrent, 1),
            ("reduction_factor", self.reduction_factor, 2),
        ):
            check_field(count >= low, name, count, f">= {low}")
        check_field(
            self.grace_steps is None or self.grace_steps >= 1,
            "grace_steps",
            self.grace_steps,
            "None or >= 1",
        )
        check_field(self.plateau_tol > 0, "plateau_tol", self.plateau_tol, "> 0")
        check_field(
            not self.val_data or bool(self.validate_with_labels),
            "val_data",
            self.val_data,
            "unset unless validate_with_labels is set (the data to fit on)",
        )


def sweep_name(opts: SweepOptions) -> str:
    return opts.name or f"sweep-{Path(opts.space).stem}-{datetime.now():%Y%m%d-%H%M%S}"


def check(opts: SweepOptions) -> tuple[PretrainConfig, list[Dimension]]:
    """The trials' base config and the space, both checked; seconds, before Ray starts.

    Raises:
        ConfigError: an invalid config or space, a reserved key, or options that conflict.
    """
    given = dotlist(opts.overrides)
    if any(o.split("=", 1)[0].strip() == "name" for o in given):
        raise ConfigError(
            "`name=` cannot be set for a sweep's trials: each is named after its "
            "Tune trial. Name the sweep with the sweep's own name."
        )
    base = resolve_config(opts.config, given)
    if opts.select_by == "rankme" and not base.logging.rankme_samples:
        raise ConfigError(
            "select_by=rankme needs RankMe at every report, but logging.rankme_samples=0 "
            "leaves it no images; drop that override or select by score."
        )
    if opts.select_by == "rankme":
        # Tune schedules (ASHA) and searches (Optuna) by what selects, and insists on finding
        # it in every report.
        base = replace(base, logging=replace(base.logging, rankme_every_report=True))
    space = load_space(opts.space)
    reserved = [d.key for d in space if d.key in _RESERVED]
    if reserved:
        raise ConfigError(f"{opts.space}: {reserved[0]} cannot be swept; the sweep sets it.")
    check_space(space, base, where=opts.space)
    check_run(with_overrides(base, overrides({d.key: d.corners()[0] for d in space})))
    if opts.search == "optuna":
        grid = [d.key for d in space if d.sampler == "grid"]
        if grid:
            raise ConfigError(
                f"{opts.space}: optuna cannot search `grid` keys ({', '.join(grid)});"
                " use `choice`, or search=random."
            )
        try:
            # lazy: Optuna is an optional extra; whether it imports is what is checked.
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError(
                "search=optuna needs Optuna: pip install 'lejepa-ray[optuna]'."
            ) from None
    return base, space
