"""Drills: make chosen steps' losses non-finite, to exercise the skip-and-stop path of a real run
end to end (``fault.inject_nonfinite_steps``).

Applied by wrapping :attr:`Trainer.loss_fn` once, when a run asks for it, so that the step
itself carries no fault-injection code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch

from lejepa_ray.objective.loss import LeJEPALoss
from lejepa_ray.train.trainer import Trainer


def inject_nonfinite(trainer: Trainer, steps: Iterable[int]) -> None:
    """Make the total loss NaN at each optimizer step in ``steps`` (1-based, as logged: step
    ``s`` is the one that ends with ``trainer.step == s``). No-op for no steps."""
    poisoned = frozenset(steps)
    if not poisoned:
        return
    real = trainer.loss_fn

    def loss_fn(global_z: torch.Tensor, all_z: torch.Tensor, step: int) -> LeJEPALoss:
        out = real(global_z, all_z, step)
        if step + 1 in poisoned:
            return dataclasses.replace(out, total=out.total * float("nan"))
        return out

    trainer.loss_fn = loss_fn
