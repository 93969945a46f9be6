"""The loss's configuration (``loss.*`` keys): λ, SIGReg's quadrature and the selection score.

:func:`lejepa_ray.objective.loss.build_loss` builds the step's loss function from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from lejepa_ray.errors import check_field


@dataclass
class LossConfig:
    """The LeJEPA objective: (1 − λ)·prediction + λ·SIGReg."""

    lam: float = 0.05
    """Trade-off λ in (0, 1), the weight of SIGReg (the paper's default: 0.05)."""
    num_slices: int = 1024
    """Random 1-D projections SIGReg tests per step."""
    t_max: float = 3.0
    """Half-width of the Epps-Pulley integration interval."""
    num_knots: int = 17
    """Odd number of quadrature knots on [0, t_max]."""
    alpha: float = 0.4
    """Exponent α of the label-free selection score loss / λ^α."""
    score_smoothing_steps: int = 50
    """``loss/smoothed`` and ``selection_score/smoothed`` (what sweeps rank trials by) average
    the last this many optimizer steps (whole logging windows, so a few more)."""

    def __post_init__(self) -> None:
        check_field(
            0 < self.lam < 1, "loss.lam", self.lam, "a value in (0, 1); the paper uses 0.05"
        )
        check_field(self.num_slices >= 1, "loss.num_slices", self.num_slices, ">= 1 (default 1024)")
        check_field(self.t_max > 0, "loss.t_max", self.t_max, "> 0 (default 3.0)")
        check_field(
            self.num_knots >= 3 and self.num_knots % 2 == 1,
            "loss.num_knots",
            self.num_knots,
            "an odd integer >= 3 (default 17)",
        )
        check_field(self.alpha >= 0, "loss.alpha", self.alpha, ">= 0 (default 0.4)")
        check_field(
            self.score_smoothing_steps >= 1,
            "loss.score_smoothing_steps",
            self.score_smoothing_steps,
            ">= 1 (default 50)",
        )
