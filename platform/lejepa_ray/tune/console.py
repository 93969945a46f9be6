"""The sweep's quiet console: one line when a trial starts, and one when it ends, is stopped
early or fails, instead of Ray Tune's status table.

Without ``--verbose`` a sweep runs Tune silent (``RunConfig(verbose=0)``) and its trials' own
output stays in their log files; :class:`TrialLines`, a Tune callback in the driver, prints
what a person follows a sweep by, as plain lines that read the same on a terminal and in a
file. The ranked table at the end is :func:`lejepa_ray.tune.report.format_table`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

from lejepa_ray.errors import first_line
from lejepa_ray.tune.ranking import selected


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s"


class TrialLines(Callback):
    """Tune callback: a line per trial start, end, early stop and failure.

    ``total``: the trials the sweep will run (for ``trial 3/12``); ``steps``: a trial's
    ``optim.steps`` when the space does not sample it (a trial that reports fewer was
    stopped early); ``select_by``: the ranking option, whose metric each end line shows;
    ``keys``: the swept keys, whose values each start line shows; ``stopper``: the
    scheduler that stops trials early (``--scheduler``)."""

    def __init__(
        self,
        total: int,
        steps: int,
        select_by: str,
        keys: list[str],
        print_fn: Callable[[str], None] | None = None,
        stopper: str = "asha",
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.steps, self.keys = total, steps, keys
        # None: the builtin print, looked up at each call. Tune pickles its callbacks with
        # the experiment's state, and a test runner's patched print would not pickle.
        self.print_fn, self.clock = print_fn, clock
        self.early = "stopped early by ASHA" if stopper == "asha" else "ended early"
        self.by = selected(select_by)
        self.started: dict[str, tuple[int, float]] = {}  # trial id -> (number, start time)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        known = self.started.get(trial.trial_id)  # a trial resumed keeps its number
        number = known[0] if known else len(self.started) + 1
        self.started[trial.trial_id] = (number, self.clock())
        values = ", ".join(f"{k}={_value(trial.config[k])}" for k in self.keys if k in trial.config)
        self._print(f"trial {number}/{self.total} {trial.trial_id} started: {values}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        step = int(result.get("step", 0))
        last = int(trial.config.get("optim.steps", self.steps))
        how = "finished" if step >= last else self.early
        figure = result.get(self.by.metric)
        shown = "" if figure is None else f", {self.by.metric} {float(figure):.4g}"
        self._print(f"{self._head(trial)} {how} at step {step}/{last}{shown}{self._took(trial)}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        where = trial.error_file or trial.path
        self._print(f"{self._head(trial)} failed{self._took(trial)}: {_error(trial)} ({where})")

    def _print(self, line: str) -> None:
        (self.print_fn or print)(line)

    def get_state(self) -> dict:
        """Kept in Tune's experiment state: a resumed sweep numbers its trials as before."""
        return {"numbers": {t: n for t, (n, _) in self.started.items()}}

    def set_state(self, state: dict) -> None:
        now = self.clock()  # a resumed trial's time counts from the resume
        self.started = {t: (n, now) for t, n in state.get("numbers", {}).items()}

    def _head(self, trial: Any) -> str:
        number, _ = self.started.get(trial.trial_id, (0, 0.0))
        return f"trial {number}/{self.total} {trial.trial_id}"

    def _took(self, trial: Any) -> str:
        started = self.started.get(trial.trial_id)
        return "" if started is None else f" ({_duration(self.clock() - started[1])})"


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _error(trial: Any) -> str:
    """The first line of what the trial raised (Ray wraps it: its ``cause``), or a pointer."""
    try:
        error = trial.get_pickled_error()
    except Exception:  # an unpicklable or unreadable error: the error file says it
        error = None
    if error is None:
        return "see its error file"
    return first_line(getattr(error, "cause", None) or error)
