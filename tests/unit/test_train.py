"""The training loop on one process: steps, accumulation, logging and checkpoint cadence.

Multi-process, Ray and slow tests: ``tests/integration/test_train.py``."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from train_helpers import _batches, _same_step, _trainer

from lejepa_ray.train.metrics import format_line
from lejepa_ray.train.trainer import Trainer, fit


def test_fit_reports_at_log_and_checkpoint_steps():
    trainer = _trainer(
        "logging.every_steps=2", "checkpoint.every_steps=3", "loss.score_smoothing_steps=3"
    )
    calls = []
    last = fit(
        trainer,
        _batches(),
        report=lambda s, m, save: calls.append((s, m, save)),
        flops_per_image=1e9,
        peak_tflops=1.0,
    )
    assert trainer.step == 6
    # (step, checkpoint): logs at 2, 4, 6; checkpoints, with fresh metrics, at 3 and the end.
    assert [(s, save) for s, _, save in calls] == [(2, False), (3, True), (4, False), (6, True)]
    windows = [m["loss"] for _, m, _ in calls]  # steps 1-2, 3, 4, 5-6
    # The smoothed loss keeps whole windows covering >= 3 steps: at step 6, steps 4-6.
    assert calls[0][1]["loss/smoothed"] == pytest.approx(windows[0])
    assert calls[1][1]["loss/smoothed"] == pytest.approx((2 * windows[0] + windows[1]) / 3)
    assert last["loss/smoothed"] == pytest.approx((windows[2] + 2 * windows[3]) / 3)
    assert last["selection_score/smoothed"] == pytest.approx(
        last["loss/smoothed"] / 0.05**0.4, rel=1e-5
    )
    # Convergence: the smoothed loss against the one logged a window (3 steps) earlier.
    assert all(math.isnan(m["loss/rel_change"]) for _, m, _ in calls[:3])  # none that old yet
    at3 = calls[1][1]["loss/smoothed"]
    assert last["loss/rel_change"] == pytest.approx((last["loss/smoothed"] - at3) / at3)
    for key in (
        "loss",
        "loss/prediction",
        "loss/sigreg",
        "selection_score",
        "lr",
        "grad_norm",
        "throughput/images_per_s",
        "throughput/views_per_s",
        "time/data_wait_fraction",
        "memory/peak_gib",
        "throughput/tflops_per_device",
        "throughput/mfu",
    ):
        assert key in last, key
    assert last["throughput/views_per_s"] == pytest.approx(4 * last["throughput/images_per_s"])
    assert last["selection_score"] == pytest.approx(last["loss"] / 0.05**0.4, rel=1e-5)
    assert "step 6/6" in format_line(6, 6, last)


def test_checkpoint_now_checkpoints_out_of_turn_at_the_step_it_says_so():
    trainer = _trainer("logging.every_steps=100", "checkpoint.every_steps=100")
    asked, calls = [], []

    def checkpoint_now(step: int) -> bool:
        asked.append(step)
        assert trainer.step == step  # asked after the step, before its report
        return step == 3

    fit(
        trainer,
        _batches(),
        report=lambda s, m, save: calls.append((s, save, m)),
        checkpoint_now=checkpoint_now,
    )
    assert asked == [1, 2, 3, 4, 5, 6]  # after every step
    # Out of turn at 3, with fresh metrics (the steps since the start), and at the end.
    assert [(s, save) for s, save, _ in calls] == [(3, True), (6, True)]
    assert all("loss" in m and math.isfinite(m["loss"]) for _, _, m in calls)


def test_without_checkpoint_now_only_the_cadence_and_the_end_checkpoint():
    trainer = _trainer("logging.every_steps=100", "checkpoint.every_steps=4")
    calls = []
    fit(trainer, _batches(), report=lambda s, m, save: calls.append((s, save)))
    assert calls == [(4, True), (6, True)]
    never = _trainer("logging.every_steps=2", "checkpoint.every_steps=100")
    calls = []
    fit(
        never,
        _batches(),
        report=lambda s, m, save: calls.append((s, save)),
        checkpoint_now=lambda step: False,
    )
    assert calls == [(2, False), (4, False), (6, True)]


def test_learning_rate_follows_the_schedule_per_optimizer_step():
    trainer = _trainer("optim.accum_steps=2", "optim.lr=5e-4", "optim.lr_reference_batch=16")
    lrs = []
    for _ in range(4):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.train_step(list(itertools.islice(_batches(), 2)))
    # Peak 5e-4 at batch 8 × 2 micro-batches = 16; warm-up 2 steps, then a cosine over 4.
    assert lrs == pytest.approx([2.5e-4, 5e-4, 5e-4, 5e-4 * 0.5 * (1 + math.cos(math.pi / 4))])


def test_accumulation_averages_micro_batches():
    """Two identical micro-batches give the gradient and loss of one."""
    one, two = _trainer(), _trainer("optim.accum_steps=2")
    batch = next(_batches())
    a, b = one.train_step([batch]), two.train_step([batch, batch])
    torch.testing.assert_close(b.grad_norm, a.grad_norm, rtol=1e-5, atol=0)
    torch.testing.assert_close(b.loss.stack(), a.loss.stack(), rtol=1e-6, atol=0)


def test_activation_checkpointing_recomputes_the_same_step():
    trainer = _trainer("scaling.activation_checkpointing=true")
    assert trainer.encoder.backbone.grad_checkpointing
    _same_step("scaling.activation_checkpointing=true")


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.encoder.named_parameters()}


def test_non_finite_step_is_skipped_and_counted():
    trainer = _trainer("fault.inject_nonfinite_steps=[2]")
    batches = _batches()
    assert trainer.train_step([next(batches)]).finite
    before = _params(trainer)
    bad = trainer.train_step([next(batches)])
    assert not bad.finite and not torch.isfinite(bad.loss.total)
    # No update, but the step count and the LR schedule go on.
    assert all(torch.equal(p, before[n]) for n, p in _params(trainer).items())
    assert trainer.step == 2 and trainer.skipped_steps == 1
    assert trainer.scheduler.last_epoch == 2
    assert trainer.train_step([next(batches)]).finite and trainer.bad_streak == 0
    assert not all(torch.equal(p, before[n]) for n, p in _params(trainer).items())


def test_logged_loss_excludes_skipped_steps_and_reports_the_count():
    trainer = _trainer("fault.inject_nonfinite_steps=[1,3]", "logging.every_steps=3")
    logged = []
    fit(trainer, _batches(), report=lambda s, m, save: logged.append(m))
    first = logged[0]
    assert math.isfinite(first["loss"]) and first["steps/skipped_nonfinite"] == 2
    assert "non-finite steps skipped 2" in format_line(3, 6, first)


def test_consecutive_non_finite_steps_stop_the_run():
    from lejepa_ray.train.trainer import NonFiniteLossError

    trainer = _trainer(
        "fault.inject_nonfinite_steps=[2,3,4]",
        "fault.max_nonfinite_steps=3",
        "checkpoint.every_steps=1",
    )
    saved = []
    with pytest.raises(NonFiniteLossError, match=r"stopped at step 4: the last 3 steps"):
        fit(trainer, _batches(), report=lambda s, m, save: saved.append(s))
    assert saved == [1, 2, 3]  # nothing is checkpointed at the step that stops the run
    assert trainer.skipped_steps == 3


def test_relative_change_compares_with_the_log_one_window_earlier():
    from lejepa_ray.train.trainer import _relative_change

    history: dict[int, float] = {}
    logged = [(20, 1.0), (40, 0.9), (60, 0.0), (80, 0.7), (100, 0.6), (120, 0.5)]
    out = [_relative_change(history, step, value, 50) for step, value in logged]
    assert all(math.isnan(v) for v in out[:3])  # nothing 50 steps older yet
    assert out[3] == pytest.approx(-0.3)  # 80 against 20
    assert out[4] == pytest.approx((0.6 - 0.9) / 0.9)  # 100 against 40
    assert math.isnan(out[5])  # 120 against 60, whose value is 0: undefined
    assert set(history) == {60, 80, 100, 120}  # 20 and 40 can no longer be needed


def test_device_augmentation_is_applied_to_every_batch_and_timed(monkeypatch):
    from lejepa_ray.data import device_views
    from lejepa_ray.data.views import PARAM_FIELDS

    trainer = _trainer("data.augment_on=device", "logging.every_steps=3")
    base = next(_batches())
    params = torch.zeros(8, 2, len(PARAM_FIELDS))
    params[..., PARAM_FIELDS.index("flip")] = 1.0
    batch = {**base, "global_params": params, "local_params": params.clone()}
    seen = []
    real = device_views.augment_batch

    def spy(b, cfg):
        out = real(b, cfg)
        seen.append(out)
        return out

    # The trainer gets the step from kernel_sets.device_augment, which looks it up when fit starts.
    monkeypatch.setattr(device_views, "augment_batch", spy)
    logged = []
    fit(trainer, itertools.repeat(batch), report=lambda s, m, save: logged.append(m))
    assert len(seen) == 6  # one call per micro-batch
    assert torch.equal(seen[0]["global"], base["global"].flip(-1).float())  # flipped, float
    assert "global_params" not in seen[0]
    assert all(m["time/augment"] > 0 for m in logged)
    # The CPU path reports no device augmentation.
    cpu = _trainer("logging.every_steps=3")
    fit(cpu, _batches(), report=lambda s, m, save: logged.append(m))
    assert "time/augment" not in logged[-1]


def test_the_progress_line_gives_the_pace_and_the_time_left():
    from lejepa_ray.train.metrics import Progress, format_duration

    now = [100.0]
    progress = Progress(600, clock=lambda: now[0])
    assert progress.update(20, step_s=0.5) == (2.0, 290.0)  # first line: the window's mean
    now[0] += 10.0  # 40 steps in 10 s since the first line, checkpoints and waits included
    assert progress.update(60, step_s=0.2) == (4.0, 135.0)
    now[0] += 10.0
    assert progress.update(100, step_s=0.2) == (4.0, 125.0)
    assert Progress(600).update(20, step_s=0.0) == (0.0, float("inf"))  # no pace known yet
    assert [format_duration(s) for s in (0, 42.4, 187, 7500, float("inf"))] == [
        "0s",
        "42s",
        "3m07s",
        "2h05m",
        "?",
    ]
    names = ("loss", "loss/prediction", "loss/sigreg", "selection_score", "lr", "grad_norm")
    names += ("throughput/images_per_s", "throughput/views_per_s", "time/data_wait_fraction")
    metrics = dict.fromkeys((*names, "memory/peak_gib"), 1.0)
    assert format_line(60, 600, metrics).startswith("step 60/600 | loss ")  # no pace yet
    metrics |= {"progress/steps_per_s": 4.0, "progress/eta_s": 135.0}
    assert format_line(60, 600, metrics).startswith("step 60/600 (4.00 steps/s, ETA 2m15s) | ")
