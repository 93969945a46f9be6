"""The sweep's quiet console (``tune/console.py``): a line per trial start, end, early stop and
failure, with fake trials (no Ray). The sweep's whole console is checked in
``tests/integration/test_sweep.py``."""

from __future__ import annotations

from types import SimpleNamespace

from lejepa_ray.errors import ConfigError
from lejepa_ray.tune.console import TrialLines


class _Trial(SimpleNamespace):
    def get_pickled_error(self):
        return self.error


def _trial(trial_id: str, step: int = 0, **config) -> _Trial:
    result = {"step": step, "rankme/backbone": 41.26}
    return _Trial(
        trial_id=trial_id,
        config={"loss.lam": 0.0312345, "optim.steps": 40, **config},
        last_result=result,
        error_file=f"/s/{trial_id}/error.txt",
        path=f"/s/{trial_id}",
        error=None,
    )


def test_one_line_per_trial_start_end_early_stop_and_failure():
    lines: list[str] = []
    now = [0.0]
    console = TrialLines(3, 40, "rankme", ["loss.lam"], lines.append, clock=lambda: now[0])
    done, stopped, failed = _trial("a_00000", 40), _trial("a_00001", 10), _trial("a_00002")
    failed.error = RuntimeError(  # Ray's wrapper keeps what the trial raised as its cause
        "ray::_trial() (pid=1)\n  trace"
    )
    failed.error.cause = ConfigError("loss.lam=-1 is invalid: expected > 0.\nmore")
    for t in (done, stopped, failed):
        console.on_trial_start(0, [], t)
    now[0] = 75.0
    console.on_trial_complete(0, [], done)
    console.on_trial_complete(0, [], stopped)
    console.on_trial_error(0, [], failed)
    assert lines == [
        "trial 1/3 a_00000 started: loss.lam=0.03123",
        "trial 2/3 a_00001 started: loss.lam=0.03123",
        "trial 3/3 a_00002 started: loss.lam=0.03123",
        "trial 1/3 a_00000 finished at step 40/40, rankme/backbone 41.26 (1m15s)",
        "trial 2/3 a_00001 stopped early by ASHA at step 10/40, rankme/backbone 41.26 (1m15s)",
        "trial 3/3 a_00002 failed (1m15s): loss.lam=-1 is invalid: expected > 0. "
        "(/s/a_00002/error.txt)",
    ]


def test_a_trial_with_its_own_step_count_ends_at_it():
    lines: list[str] = []
    console = TrialLines(1, 40, "score", ["optim.steps"], lines.append)
    short = _trial("b_00000", 20, **{"optim.steps": 20})
    console.on_trial_start(0, [], short)
    console.on_trial_complete(0, [], short)
    assert lines[0] == "trial 1/1 b_00000 started: optim.steps=20"
    assert lines[1].startswith("trial 1/1 b_00000 finished at step 20/20")
    fifo = TrialLines(1, 40, "score", [], lines.append, stopper="fifo")
    fifo.on_trial_complete(0, [], _trial("b_00001", 10))
    assert "ended early at step 10/40" in lines[-1]


def test_a_resumed_sweep_numbers_its_trials_as_before():
    first: list[str] = []
    console = TrialLines(2, 40, "score", [], first.append)
    for t in (_trial("c_00000"), _trial("c_00001")):
        console.on_trial_start(0, [], t)
    resumed: list[str] = []
    again = TrialLines(2, 40, "score", [], resumed.append)
    again.set_state(console.get_state())
    again.on_trial_start(0, [], _trial("c_00001"))
    assert resumed == ["trial 2/2 c_00001 started: "]
