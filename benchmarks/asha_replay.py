"""ASHA stopping by the selection score, by RankMe, or not at all (FIFO), replayed on the curves
of one FIFO sweep.

A FIFO sweep run with ``--select_by rankme`` (the default) logs, at every report, both
``selection_score/smoothed`` and ``rankme/backbone`` to each trial's TensorBoard events under
``<sweep>/runs/<trial>/tensorboard``, and, with ``--validate_with_labels``, each trial's probe
accuracies to ``<sweep>/results.csv``. This script feeds those curves, trial after trial in the
order the sweep ran them (one at a time, ``--concurrent 1``), through the scheduler the sweep
builds (``tune.tuner._scheduler``: Ray Tune's ASHA, rungs at ``grace · r^k`` steps), once per
stopping metric. A trial ASHA stops consumes the steps up to its stop; the others run to the
end. With one trial at a time a trial's curve does not depend on the scheduler, so the replay
decides what a real ASHA sweep of the same trials would, without running three sweeps.

For each policy it prints the trial-steps spent (and their fraction of FIFO's), the winner
(``--select_by`` among the trials that ran to the end, as ``lejepa-ray sweep`` ranks them) and
the winner's probe accuracies beside the best any trial reached.

    python benchmarks/asha_replay.py SWEEP_DIR [--grace_steps N] [--reduction_factor 2]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from lejepa_ray.config import load_config
from lejepa_ray.tune.options import SweepOptions
from lejepa_ray.tune.ranking import METRIC, SELECT_BY, selected
from lejepa_ray.tune.tuner import _scheduler

Curve = list[tuple[int, float]]


@dataclass(frozen=True)
class Policy:
    """How a sweep stops trials (``stop_by``: a ``--select_by`` name, or None for FIFO) and
    which trial it names the winner (``select_by``)."""

    stop_by: str | None
    select_by: str

    @property
    def name(self) -> str:
        stop = "FIFO" if self.stop_by is None else f"ASHA by {self.stop_by}"
        return f"{stop}, select by {self.select_by}"


POLICIES = (
    Policy(None, "rankme"),
    Policy("score", "rankme"),  # before issue 35: ASHA stopped by the score whatever selected
    Policy("rankme", "rankme"),
    Policy(None, "score"),
    Policy("score", "score"),
)


def stops(
    curves: dict[str, dict[str, Curve]], metric: str, mode: str, grace: int, rf: int, steps: int
) -> dict[str, int | None]:
    """The step at which ASHA (as the sweep builds it, stopping by ``metric`` in ``mode``)
    stops each trial of ``curves`` (trial -> metric -> (step, value), trials in the order they
    ran), or None for a trial it lets finish."""
    base = load_config(None, [f"optim.steps={steps}", "optim.warmup_steps=0"])
    asha = _scheduler(SweepOptions(space="-", grace_steps=grace, reduction_factor=rf), base, [])
    asha.set_search_properties(metric, mode)
    stopped: dict[str, int | None] = {}
    for trial_id, by_metric in curves.items():
        # Its own last step: ASHA lets a trial finish there (tuner._FinishingASHA).
        trial = SimpleNamespace(trial_id=trial_id, config={"optim.steps": _last_step(by_metric)})
        asha.on_trial_add(None, trial)
        stopped[trial_id] = None
        for step, value in by_metric[metric]:
            result = {"step": step, metric: value}
            if asha.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                stopped[trial_id] = step
                break
    return stopped


def winner(rows: dict[str, dict], finished: list[str], select_by: str) -> str:
    """The trial ``lejepa-ray sweep`` names best: by ``select_by`` among ``finished``."""
    by = selected(select_by)
    sign = 1 if by.lower_is_better else -1
    return min(finished, key=lambda t: sign * float(rows[t][by.column]))


def replay(
    curves: dict[str, dict[str, Curve]],
    rows: dict[str, dict],
    grace: int,
    rf: int,
    policies: tuple[Policy, ...] = POLICIES,
) -> list[dict]:
    """One line per policy: trial-steps spent, trials finished, the winner and its probes."""
    steps = max(_last_step(c) for c in curves.values())
    fifo_steps = sum(_last_step(c) for c in curves.values())
    out = []
    for policy in policies:
        if policy.stop_by is None:
            stopped: dict[str, int | None] = dict.fromkeys(curves)
        else:
            by = selected(policy.stop_by)
            stopped = stops(curves, by.metric, by.mode, grace, rf, steps)
        spent = sum(at if at is not None else _last_step(curves[t]) for t, at in stopped.items())
        finished = [t for t, at in stopped.items() if at is None]
        best = winner(rows, finished, policy.select_by)
        out.append(
            {
                "policy": policy.name,
                "trial_steps": spent,
                "of_fifo": spent / fifo_steps,
                "finished": len(finished),
                "winner": best,
                "winner_knn": _number(rows[best].get("knn_top1")),
                "winner_linear": _number(rows[best].get("linear_top1")),
            }
        )
    return out


def _last_step(curve: dict[str, Curve]) -> int:
    """The last step a trial reported (the score is in every report)."""
    return max(step for step, _ in curve[METRIC])


def _number(text: str | None) -> float:
    return float(text) if text not in (None, "") else math.nan


def load(sweep_dir: Path) -> tuple[dict[str, dict[str, Curve]], dict[str, dict]]:
    """Each trial's curves of the stopping metrics (trials in the order they ran) and its row
    of ``results.csv``."""
    # lazy: TensorBoard's reader, only for reading a real sweep.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with (sweep_dir / "results.csv").open() as f:
        rows = {r["trial"]: r for r in csv.DictReader(f)}
    metrics = [selected(name).metric for name in SELECT_BY]
    curves: dict[str, dict[str, Curve]] = {}
    for trial in sorted(rows):  # Tune numbers its trials in the order it starts them
        events = EventAccumulator(
            str(sweep_dir / "runs" / trial / "tensorboard"), size_guidance={"scalars": 0}
        )
        events.Reload()
        have = set(events.Tags()["scalars"])
        missing = [m for m in metrics if m not in have]
        if missing:
            raise SystemExit(
                f"trial {trial} logged no {missing[0]}; replay needs a sweep run with "
                "--select_by rankme (RankMe at every report)."
            )
        at = {m: [e.step for e in events.Scalars(m)] for m in metrics}
        if len(set(map(tuple, at.values()))) > 1:
            raise SystemExit(
                f"trial {trial} logged RankMe at other steps than the score (at checkpoints "
                "only?); replay needs a sweep run with --select_by rankme (RankMe at every report)."
            )
        timed = [t for t in ("time/rankme_s", "time/step_s") if t in have]
        curves[trial] = {m: [(e.step, e.value) for e in events.Scalars(m)] for m in metrics + timed}
    return curves, rows


def rankme_cost(curves: dict[str, dict[str, Curve]]) -> dict[str, float]:
    """What computing RankMe at every report cost, from the trials' ``time/rankme_s`` and
    ``time/step_s`` (medians over all reports): seconds per report, the reports' usual spacing
    in steps, and RankMe's share of the training time (``time/step_s`` of a window already
    includes the RankMe of the report before it)."""
    rankme = [v for c in curves.values() for _, v in c.get("time/rankme_s", [])]
    step = [v for c in curves.values() for _, v in c.get("time/step_s", [])]
    steps = sorted({s for c in curves.values() for s, _ in c.get("time/rankme_s", [])})
    if not rankme or not step or len(steps) < 2:
        return {}
    # The usual spacing (logging.every_steps); a last step off the grid makes one gap shorter.
    every = statistics.mode(b - a for a, b in itertools.pairwise(steps))
    per_report, step_s = statistics.median(rankme), statistics.median(step)
    return {
        "rankme_s_per_report": per_report,
        "report_every_steps": every,
        "step_s": step_s,
        "rankme_share_of_step": per_report / every / step_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--grace_steps", type=int, default=None)
    parser.add_argument("--reduction_factor", type=int, default=2)
    args = parser.parse_args()
    curves, rows = load(args.sweep_dir)
    steps = max(_last_step(c) for c in curves.values())
    grace = args.grace_steps or max(1, steps // 4)  # the sweep's default
    lines = replay(curves, rows, grace, args.reduction_factor)
    best_knn = max(_number(r.get("knn_top1")) for r in rows.values())
    best_linear = max(_number(r.get("linear_top1")) for r in rows.values())
    print(
        f"{len(curves)} trials of {steps} steps; ASHA rungs from {grace} steps, "
        f"reduction factor {args.reduction_factor}; best of any trial: kNN {best_knn:.3f}, "
        f"linear {best_linear:.3f}"
    )
    print(f"{'policy':<34}{'trial-steps':>12}{'of FIFO':>9}{'finished':>10}  winner (kNN/linear)")
    for line in lines:
        print(
            f"{line['policy']:<34}{line['trial_steps']:>12}{line['of_fifo']:>9.0%}"
            f"{line['finished']:>10}  {line['winner']} "
            f"({line['winner_knn']:.3f}/{line['winner_linear']:.3f})"
        )
    cost = rankme_cost(curves)
    if cost:
        print(
            f"RankMe at every report: {cost['rankme_s_per_report']:.3f} s per report, one report "
            f"every {cost['report_every_steps']} steps of {cost['step_s']:.3f} s: "
            f"{cost['rankme_share_of_step']:.1%} of the training time"
        )
    print(json.dumps({"policies": lines, "rankme_cost": cost}))


if __name__ == "__main__":
    main()
