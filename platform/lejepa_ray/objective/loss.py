"""The LeJEPA objective: view-prediction loss plus SIGReg, traded off by one λ.

:func:`lejepa_loss` computes one step's loss; :func:`build_loss` binds it to a run's
:class:`~lejepa_ray.objective.config.LossConfig`. The parts of the loss are the fields of
:class:`LeJEPALoss`, each with the name it is logged under: the trainer sums, averages and logs
them by name, so a new term is a field here, its computation in :func:`lejepa_loss` and, if it
has a weight, a key in ``LossConfig``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TypeVar

import torch
import torch.distributed as dist

from lejepa_ray.objective.config import LossConfig
from lejepa_ray.objective.sigreg import compute_dtype, sigreg

__all__ = ["LeJEPALoss", "LossFn", "build_loss", "lejepa_loss", "selection_score"]

_Score = TypeVar("_Score", float, torch.Tensor)


def _logged_as(metric: str) -> dict[str, str]:
    return {"metric": metric}


@dataclass(frozen=True)
class LeJEPALoss:
    """Scalar parts of the LeJEPA loss of one step (float32 tensors), each logged under the
    metric name in its field's metadata."""

    total: torch.Tensor = field(metadata=_logged_as("loss"))
    """(1 − λ)·prediction + λ·sigreg: the tensor to call ``backward()`` on."""
    prediction: torch.Tensor = field(metadata=_logged_as("loss/prediction"))
    """Mean squared distance of every view's embedding to the mean of the global views (on one
    rank of an uneven split, times its ``prediction_weight``: the mean over ranks is then the
    global batch's)."""
    sigreg: torch.Tensor = field(metadata=_logged_as("loss/sigreg"))
    """SIGReg averaged over views (each view scored with the same directions of this step)."""
    selection_score: torch.Tensor = field(metadata=_logged_as("selection_score"))
    """Label-free model-selection score ``total / λ^α`` (detached): lower is better."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The parts' names, in :meth:`stack` order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def metric_names(cls) -> dict[str, str]:
        """Part name -> the metric it is logged as (``prediction`` -> ``loss/prediction``)."""
        return {f.name: f.metadata["metric"] for f in fields(cls)}

    def stack(self) -> torch.Tensor:
        """(P,) float32, P = ``len(names())``: the parts in :meth:`names` order, detached; for
        sums and all-reduces that must not wait for the host."""
        return torch.stack([getattr(self, name).detach() for name in self.names()]).float()

    @classmethod
    def unstack(cls, values: torch.Tensor) -> LeJEPALoss:
        """The inverse of :meth:`stack`: (P,) values back to named parts."""
        return cls(**dict(zip(cls.names(), values.unbind(), strict=True)))

    def as_metrics(self) -> dict[str, float]:
        """The parts as Python floats, for logging (one host sync), each under the last part
        of its metric name: ``loss``, ``prediction``, ``sigreg``, ``selection_score``."""
        short = [metric.rsplit("/", 1)[-1] for metric in self.metric_names().values()]
        return dict(zip(short, self.stack().tolist(), strict=True))


LossFn = Callable[[torch.Tensor, torch.Tensor, int], LeJEPALoss]
"""(global embeddings (V_g, B, K), all embeddings (V, B, K), step) -> the step's loss."""


def build_loss(cfg: LossConfig, *, prediction_weight: float = 1.0) -> LossFn:
    """The run's loss function: :func:`lejepa_loss` with ``cfg``'s λ, SIGReg quadrature and
    selection-score exponent, without the per-call shape checks (the trainer's shapes are
    fixed), and this rank's ``prediction_weight`` (see :func:`lejepa_loss`)."""
    return functools.partial(
        lejepa_loss,
        lam=cfg.lam,
        num_slices=cfg.num_slices,
        t_max=cfg.t_max,
        num_knots=cfg.num_knots,
        alpha=cfg.alpha,
        validate=False,
        prediction_weight=prediction_weight,
    )


def selection_score(total: _Score, lam: float, alpha: float = 0.4) -> _Score:
    """``total / λ^α``: the paper's scaling under which LeJEPA's training loss ranks models like
    their linear-probe accuracy does (lower loss, higher accuracy), across λ."""
    return total / math.pow(lam, alpha)


def lejepa_loss(
    global_views: torch.Tensor,
    all_views: torch.Tensor,
    step: int,
    lam: float = 0.05,
    *,
    num_slices: int = 1024,
    t_max: float = 3.0,
    num_knots: int = 17,
    alpha: float = 0.4,
    validate: bool = True,
    group: dist.ProcessGroup | None = None,
    prediction_weight: float = 1.0,
) -> LeJEPALoss:
    """LeJEPA loss of one step.

    Args:
        global_views: ``(V_g, N, K)`` embeddings of the global views; their mean over views is
            the prediction target.
        all_views: ``(V, N, K)`` embeddings of every view (global and local, possibly from
            different resolutions), same N samples in the same order, same K.
        step: training step; seeds SIGReg's directions (identical on all ranks and views).
        lam: trade-off λ in (0, 1): weight of SIGReg; 1 − λ weighs the prediction loss.
        num_slices, t_max, num_knots, validate, group: passed to
            :func:`~lejepa_ray.objective.sigreg.sigreg`.
        alpha: exponent α of the selection score ``total / λ^α``.
        prediction_weight: this rank's share of the global batch times the number of ranks,
            ``R · N_r / N`` (1 when the ranks' batches are equal). The prediction loss is a mean
            over this rank's N_r samples, and data-parallel training averages the R ranks'
            gradients; weighted so, that average is the gradient of the mean over all N
            samples. SIGReg needs no weight: it is already the statistic of all N.

    Returns:
        :class:`LeJEPALoss` with ``total`` differentiable; no stop-gradient anywhere, the
        target (mean of the global views) receives gradient too, as in the paper.
    """
    if not 0.0 < lam < 1.0:
        raise ValueError(f"lam (λ) must lie in (0, 1); the paper's default is 0.05, got {lam!r}.")
    if not prediction_weight > 0:
        raise ValueError(f"prediction_weight must be > 0 (R · N_r / N), got {prediction_weight!r}.")
    for name, views in (("global_views", global_views), ("all_views", all_views)):
        if views.dim() != 3 or views.shape[0] < 1:
            raise ValueError(
                f"{name} must have shape (V, N, K) with V >= 1 views; got {tuple(views.shape)}."
            )
    if global_views.shape[1:] != all_views.shape[1:]:
        raise ValueError(
            "global_views and all_views must share N (samples) and K (embedding size): got "
            f"global_views {tuple(global_views.shape)} and all_views {tuple(all_views.shape)}."
        )

    dtype = compute_dtype(all_views.dtype, "lejepa_loss input all_views")
    with torch.autocast(device_type=all_views.device.type, enabled=False):
        target = global_views.to(dtype).mean(0)
        prediction = (target - all_views.to(dtype)).square().mean() * prediction_weight
        reg = sigreg(all_views, step, num_slices, t_max, num_knots, validate=validate, group=group)
        total = (1.0 - lam) * prediction + lam * reg
    return LeJEPALoss(
        total=total,
        prediction=prediction,
        sigreg=reg,
        selection_score=selection_score(total.detach(), lam, alpha),
    )
