"""The Tune experiment a sweep runs: its scheduler, its search, its console and the ``Tuner``.

:mod:`~lejepa_ray.tune.sweep` decides what is run (each trial's config, resuming, the outputs
after ``fit``); this module says how Tune runs it: ``opts.samples`` draws from the space
(:func:`~lejepa_ray.tune.space.to_tune`), at most ``opts.concurrent`` at a time, scheduled by
ASHA (which never stops a trial on its last step) or FIFO and searched at random or by Optuna,
both by the ``select_by`` metric (:func:`~lejepa_ray.tune.ranking.selected`), with Tune's own
console (``--verbose``) or a silent one and a line per trial
(:class:`~lejepa_ray.tune.console.TrialLines`).

Tune pickles this configuration, scheduler and searcher included, into the experiment's
``tuner.pkl``: a resumed sweep gets them back from there, not from here.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.basic_variant import BasicVariantGenerator

from lejepa_ray.config import PretrainConfig
from lejepa_ray.tune.console import TrialLines
from lejepa_ray.tune.options import SweepOptions
from lejepa_ray.tune.ranking import selected
from lejepa_ray.tune.space import Dimension, to_tune

NEW_OUTPUT = "RAY_AIR_NEW_OUTPUT"
"""Ray Tune's switch between its console engines ("0": the legacy one)."""


def new_tuner(
    opts: SweepOptions,
    base: PretrainConfig,
    space: list[Dimension],
    trainable: Any,
    name: str,
    root: str,
) -> tune.Tuner:
    """A new Tune experiment ``root/name`` (:func:`_tune_config`)."""
    return tune.Tuner(
        trainable,
        param_space=to_tune(space),
        tune_config=_tune_config(opts, base, space),
        run_config=tune.RunConfig(name=name, storage_path=root, **_console(opts, base, space)),
    )


@contextlib.contextmanager
def tune_output(verbose: bool) -> Iterator[None]:
    """Tune's console engine for ``fit``: its own unless ``verbose``, else the legacy one,
    which ``verbose=0`` silences wholly (the new one prints its configuration box, a results
    path and a TensorBoard command into Ray's session folder at every start regardless)."""
    if verbose:
        yield
        return
    before = os.environ.get(NEW_OUTPUT)
    os.environ[NEW_OUTPUT] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(NEW_OUTPUT, None)
        else:
            os.environ[NEW_OUTPUT] = before


def trial_count(opts: SweepOptions, space: list[Dimension]) -> int:
    """How many trials the sweep runs: the samples times the combinations of ``grid`` keys."""
    return opts.samples * math.prod(len(d.values) for d in space if d.sampler == "grid")


def _console(opts: SweepOptions, base: PretrainConfig, space: list[Dimension]) -> dict:
    """Tune's console settings: its own output with ``--verbose``, else silent, with a line
    per trial from :class:`~lejepa_ray.tune.console.TrialLines`."""
    if opts.verbose:
        return {}
    keys = [d.key for d in space if d.sampler != "fixed"]
    lines = TrialLines(
        trial_count(opts, space), base.optim.steps, opts.select_by, keys, stopper=opts.scheduler
    )
    return {"verbose": 0, "callbacks": [lines]}


def _tune_config(
    opts: SweepOptions, base: PretrainConfig, space: list[Dimension]
) -> tune.TuneConfig:
    """``opts.samples`` draws from ``space``, scheduled (ASHA) and searched (Optuna) by the
    ``select_by`` metric, which :func:`options.check` makes sure is in every report."""
    by = selected(opts.select_by)
    return tune.TuneConfig(
        metric=by.metric,
        mode=by.mode,
        num_samples=opts.samples,
        scheduler=_scheduler(opts, base, space),
        search_alg=_searcher(opts),
    )


def _max_steps(base: PretrainConfig, space: list[Dimension]) -> int:
    """The longest a trial can run: ``optim.steps`` of the config, or the space's largest."""
    dim = next((d for d in space if d.key == "optim.steps"), None)
    return max(int(v) for v in dim.corners()) if dim else base.optim.steps


class _FinishingASHA(ASHAScheduler):
    """Tune's ASHA, except that a trial's report of its last step is never answered with STOP.

    ``stop_last_trials=False`` only keeps ASHA from stopping every trial at ``max_t``; when
    ``grace · r^k`` lands on ``max_t`` (a quarter of the steps, r = 2: rungs at 1/4, 1/2 and
    all of them) there is a rung there too, and the worse trials would be stopped on their
    final report, before their trial function probes the last checkpoint. The rung still
    records the trial's value. The last step is the trial's own ``optim.steps`` when the space
    samples it (a shorter trial ends before ``max_t``), else ``max_t``."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        # max_t is the largest optim.steps the space can draw (_max_steps).
        last = int(trial.config.get("optim.steps", self._max_t))
        if result.get(self._time_attr, 0) >= last:
            return TrialScheduler.CONTINUE
        return action


def _scheduler(
    opts: SweepOptions, base: PretrainConfig, space: list[Dimension]
) -> ASHAScheduler | FIFOScheduler:
    if opts.scheduler == "fifo":
        return FIFOScheduler()
    steps = _max_steps(base, space)
    grace = min(opts.grace_steps or max(1, steps // 4), steps)
    # A trial that reaches its last step ends by returning, not by being stopped: its final
    # checkpoint (and probe) must complete.
    return _FinishingASHA(
        time_attr="step",
        max_t=steps,
        grace_period=grace,
        reduction_factor=opts.reduction_factor,
        stop_last_trials=False,
    )


def _searcher(opts: SweepOptions) -> ConcurrencyLimiter | BasicVariantGenerator:
    if opts.search == "optuna":
        # lazy: imports Optuna, the optional extra, which only --search optuna needs.
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(
            OptunaSearch(seed=opts.search_seed), max_concurrent=opts.concurrent
        )
    # Tune applies max_concurrent_trials only to searchers it builds itself; this one is built
    # here for its seed, so it gets the limit directly.
    return BasicVariantGenerator(random_state=opts.search_seed, max_concurrent=opts.concurrent)
