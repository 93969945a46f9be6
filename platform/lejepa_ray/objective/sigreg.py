"""SIGReg: sliced Epps-Pulley normality regularizer, exact across data-parallel ranks.

The Epps-Pulley statistic of N samples x_1..x_N of a 1-D variable is

    T = N * ∫ |φ̂_N(t) − e^{−t²/2}|² e^{−t²/2} dt,     φ̂_N(t) = (1/N) Σ_i e^{i t x_i}

integrated with the trapezoid rule on [−t_max, t_max]. The integrand is even, so it is evaluated
on the `num_knots` points t_j = j·Δ of [0, t_max] with doubled interior weights: the same
numbers as the official `lejepa` package's `EppsPulley(t_max=3, n_points=17)`.

Cost. The textbook implementation materializes an N × K × knots tensor of angles and calls
cos and sin on all of it, then autograd keeps both for backward. Here the angles are never
stored: with z = e^{iΔx}, the characteristic function at knot j is z^j, so one complex exp per
sample followed by repeated multiplication gives every knot (forward), and the backward is a
trigonometric polynomial in z evaluated by Horner's rule. Work is done in column chunks that fit
in cache, and only x itself is saved for backward: memory O(N·K).

Distributed exactness. When torch.distributed is initialized, each rank sums e^{i t x} over its
own samples and the sums (and the sample count, which is the t=0 knot) are all-reduced with a
differentiable SUM, so every rank computes the statistic of the global batch. The all-reduce's
backward sums the (identical) upstream gradients of all R ranks, so each rank's per-sample
gradient is R × the one-process gradient; DDP/FSDP gradient averaging (÷R) then yields exactly
the one-process parameter gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable
from torch.distributed import _functional_collectives as funcol

__all__ = ["compute_dtype", "epps_pulley", "quadrature", "random_directions", "sigreg"]

# Elements of one (rows × columns) chunk of complex work. On CPU this keeps the working set
# (a few complex64 tensors of this size) inside the L2/L3 cache, which is worth ~2× here; on
# accelerators fewer, larger kernels win.
_CHUNK_ELEMENTS = {"cpu": 1 << 18}
_DEFAULT_CHUNK_ELEMENTS = 1 << 25


def _check_quadrature_args(t_max: float, num_knots: int) -> None:
    if not isinstance(num_knots, int) or num_knots < 3 or num_knots % 2 == 0:
        raise ValueError(
            f"num_knots must be an odd integer >= 3 (the official EppsPulley uses 17), "
            f"got {num_knots!r}."
        )
    if not t_max > 0:
        raise ValueError(f"t_max must be positive (default 3.0), got {t_max!r}.")


@functools.lru_cache(maxsize=32)
def _quadrature_f64(
    t_max: float, num_knots: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = torch.linspace(0.0, t_max, num_knots, dtype=torch.float64)
    dt = t_max / (num_knots - 1)
    phi = torch.exp(-0.5 * t.square())
    # Trapezoid on [−t_max, t_max] folded onto [0, t_max]: t=0 is an interior node counted once
    # (weight Δ), interior positive nodes appear twice (2Δ), ±t_max are end nodes (Δ/2 each).
    weights = torch.full((num_knots,), 2.0 * dt, dtype=torch.float64)
    weights[0] = dt
    weights[-1] = dt
    return t, phi, weights * phi


def quadrature(
    t_max: float = 3.0,
    num_knots: int = 17,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Knots and weights of the Epps-Pulley quadrature.

    Returns:
        ``(t, phi, weights)``, each ``(num_knots,)``: knots ``t_j = j·t_max/(num_knots−1)``,
        the standard normal characteristic function ``phi = e^{−t²/2}`` at them, and trapezoid
        weights already multiplied by the integration window ``e^{−t²/2}``, so that
        ``∫_{−t_max}^{t_max} f(t) e^{−t²/2} dt ≈ Σ_j weights_j f(t_j)`` for even ``f``.
    """
    _check_quadrature_args(t_max, num_knots)
    t, phi, weights = _quadrature_f64(float(t_max), num_knots)
    return (
        t.to(device=device, dtype=dtype),
        phi.to(device=device, dtype=dtype),
        weights.to(device=device, dtype=dtype),
    )


class _CharacteristicSums(torch.autograd.Function):
    """Σ_i cos(t_j x_i) and Σ_i sin(t_j x_i) over the sample axis, for knots t_j = j·Δ.

    Input ``x``: (B, N, K). Outputs: two (B, K, J) tensors. Saves only ``x`` for backward.
    ``ctx`` is autograd's context, typed ``Any``: it carries ``dt`` and ``num_knots`` as ad-hoc
    attributes, which its torch class does not declare.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, dt: float, num_knots: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(x)
        ctx.dt, ctx.num_knots = dt, num_knots
        ctype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
        batch, _, cols = x.shape
        sums = torch.empty(batch, cols, num_knots, dtype=ctype, device=x.device)
        sums[..., 0] = x.shape[1]  # e^{i·0·x} = 1: the t=0 knot counts the samples
        for b, k, xc in _chunks(x):
            z = torch.polar(torch.ones_like(xc), xc * dt)  # e^{iΔx}: (b, N, k)
            power = z.clone()
            sums[b, k, 1] = power.sum(-2)
            for j in range(2, num_knots):
                power.mul_(z)  # e^{i jΔ x}
                sums[b, k, j] = power.sum(-2)
        return sums.real.contiguous(), sums.imag.contiguous()

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_cos: torch.Tensor | None, grad_sin: torch.Tensor | None
    ) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        dt, num_knots = ctx.dt, ctx.num_knots
        # d/dx Σ_j [gc_j cos(t_j x) + gs_j sin(t_j x)] = Re Σ_j t_j (gs_j + i gc_j) e^{i t_j x}
        # = Re p(z) with z = e^{iΔx}: a polynomial in z, evaluated by Horner's rule.
        t = torch.arange(num_knots, device=x.device, dtype=x.dtype) * dt
        shape = (x.shape[0], x.shape[2], num_knots)
        grad_cos = grad_cos if grad_cos is not None else x.new_zeros(shape)
        grad_sin = grad_sin if grad_sin is not None else x.new_zeros(shape)
        coeffs = torch.complex(grad_sin, grad_cos) * t  # (B, K, J); coeffs[..., 0] = 0
        grad_x = torch.empty_like(x)
        for b, k, xc in _chunks(x):
            z = torch.polar(torch.ones_like(xc), xc * dt)
            c = coeffs[b, k].unsqueeze(1)  # (b, 1, k, J): broadcast over samples
            poly = c[..., num_knots - 1].expand_as(z).clone()
            for j in range(num_knots - 2, 0, -1):
                poly.mul_(z).add_(c[..., j])
            poly.mul_(z)
            grad_x[b, :, k] = poly.real
        return grad_x, None, None


def _chunks(x: torch.Tensor) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """Yield (batch slice, column slice, x[b, :, k]) blocks of about _CHUNK_ELEMENTS elements."""
    batch, rows, cols = x.shape
    budget = _CHUNK_ELEMENTS.get(x.device.type, _DEFAULT_CHUNK_ELEMENTS)
    col_step = max(1, min(cols, budget // max(rows, 1)))
    batch_step = max(1, budget // max(rows * col_step, 1))
    for b0 in range(0, batch, batch_step):
        b = slice(b0, b0 + batch_step)
        for k0 in range(0, cols, col_step):
            k = slice(k0, k0 + col_step)
            yield b, k, x[b, :, k]


def _world(group: dist.ProcessGroup | None) -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


def _all_reduce_sum(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Differentiable SUM all-reduce: its backward is the SUM all-reduce of the gradients."""
    if group is None:
        group = dist.group.WORLD
        if group is None:  # only called with more than one rank, so the default group exists
            raise RuntimeError("torch.distributed has no default process group to reduce over.")
    reduced: torch.Tensor = funcol.all_reduce(tensor, "sum", group)
    # torch leaves wait_tensor unannotated (an untyped call returning Any).
    out: torch.Tensor = funcol.wait_tensor(reduced)  # type: ignore[no-untyped-call]
    return out


def compute_dtype(dtype: torch.dtype, what: str) -> torch.dtype:
    """The dtype the objective is computed in for inputs of ``dtype`` (``what`` names the input
    in the error raised for a non-floating dtype)."""
    if not dtype.is_floating_point:
        raise ValueError(f"{what} must be a floating-point tensor, got dtype {dtype}.")
    # float64 stays float64 (gradcheck, references); bf16/fp16 are promoted: the statistic is
    # a difference of averages of unit-modulus numbers and needs float32 resolution.
    return torch.float64 if dtype == torch.float64 else torch.float32


def epps_pulley(
    x: torch.Tensor,
    t_max: float = 3.0,
    num_knots: int = 17,
    *,
    validate: bool = True,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Epps-Pulley normality statistic of each column of ``x`` against N(0, 1).

    Args:
        x: ``(..., N, K)``: N samples of K univariate variables (e.g. projections of embeddings
            onto K directions). Any floating dtype; computed in float32 (float64 if given).
        t_max: half-width of the integration interval ``[−t_max, t_max]``.
        num_knots: odd number of trapezoid knots on ``[0, t_max]``.
        validate: check for fewer than 2 samples and non-finite values (one host sync) and
            raise ``ValueError``. Turn off only where the caller handles non-finite results.
        group: process group to reduce over when torch.distributed is initialized (default:
            the whole world). Every rank of it must call with the same leading shape and K.

    Returns:
        ``(..., K)`` statistics ``N·∫|φ̂_N(t) − e^{−t²/2}|² e^{−t²/2} dt``, with N and φ̂_N taken
        over the samples of all ranks of ``group``. Its expectation under the null is
        ``∫(1 − e^{−t²}) e^{−t²/2} dt`` (≈1.05 with the defaults); a collapsed column scores O(N).
    """
    dtype = _check_args(x, "x", "epps_pulley", t_max, num_knots, group)
    stat, count = _statistic(x.to(dtype), t_max, num_knots, group)
    if validate:
        _raise_if_invalid(stat, count, x, "x")
    return stat


def _check_args(
    x: torch.Tensor,
    name: str,
    caller: str,
    t_max: float,
    num_knots: int,
    group: dist.ProcessGroup | None,
) -> torch.dtype:
    """Checks that need no data (so no host sync and no collective); returns the compute dtype."""
    _check_quadrature_args(t_max, num_knots)
    if x.dim() < 2:
        raise ValueError(
            f"{caller} expects {name} of shape (..., N, features) with N samples along dim -2; "
            f"got a {x.dim()}-d tensor of shape {tuple(x.shape)}."
        )
    # With several ranks a rank may hold fewer than 2 samples; the global count is checked
    # after the all-reduce instead.
    if _world(group) == 1 and x.shape[-2] < 2:
        raise ValueError(
            f"{caller} needs at least 2 samples along dim -2 of {name}; got N={x.shape[-2]} "
            f"in a tensor of shape {tuple(x.shape)}."
        )
    return compute_dtype(x.dtype, f"{caller} input {name}")


def _statistic(
    x: torch.Tensor, t_max: float, num_knots: int, group: dist.ProcessGroup | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column statistics ``(..., K)`` and the global sample count ``(B, K, 1)``, in the
    dtype of ``x`` (float32 or float64)."""
    _, phi, weights = quadrature(t_max, num_knots, device=x.device, dtype=x.dtype)
    lead, (n, k) = x.shape[:-2], x.shape[-2:]
    with torch.autocast(device_type=x.device.type, enabled=False):
        flat = x.reshape(-1, n, k)
        cos_sum, sin_sum = _CharacteristicSums.apply(flat, t_max / (num_knots - 1), num_knots)
        if _world(group) > 1:
            cos_sum, sin_sum = _all_reduce_sum(torch.stack([cos_sum, sin_sum]), group).unbind(0)
        count = cos_sum[..., :1].detach()  # the t=0 knot: global N, per column
        err = (cos_sum / count - phi).square() + (sin_sum / count).square()
        stat = (err * weights).sum(-1) * count[..., 0]
    return stat.reshape(*lead, k), count


def _raise_if_invalid(
    stat: torch.Tensor, count: torch.Tensor, inputs: torch.Tensor, name: str
) -> None:
    # One host sync for both checks. Checked after the all-reduce so that every rank sees the
    # same verdict and raises together, instead of one rank raising while the others wait.
    global_n, finite = torch.stack(
        [count.min(), torch.isfinite(stat).all().to(count.dtype)]
    ).tolist()
    if global_n < 2:
        raise ValueError(
            f"Epps-Pulley needs at least 2 samples in total across ranks; got N={int(global_n)}."
        )
    if not finite:
        bad = int((~torch.isfinite(inputs)).sum())
        where = (
            f"{name} contains {bad} non-finite value(s) (NaN or ±Inf) out of "
            f"{inputs.numel()} on this rank"
            if bad
            else f"{name} is finite on this rank, so another rank's input holds NaN or ±Inf"
        )
        raise ValueError(
            f"Epps-Pulley statistic is not finite: {where}. Embeddings must be finite; "
            f"check the model for overflow (lower the learning rate, use bf16 instead of fp16)."
        )


def random_directions(
    dim: int,
    num_slices: int,
    step: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Unit-norm Gaussian directions for slicing, drawn from a generator seeded by ``step``.

    Deterministic in ``(dim, num_slices, step, device type)``: identical on every rank without
    any communication, shared by all views of a step, new at every step.

    Returns:
        ``(dim, num_slices)``: each column has unit Euclidean norm.
    """
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(
            f"step must be a non-negative int (it seeds the directions), got {step!r}."
        )
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1 (default 1024), got {num_slices!r}.")
    device = torch.device(device if device is not None else "cpu")
    generator = torch.Generator(device=device).manual_seed(step)
    directions = torch.randn(dim, num_slices, generator=generator, device=device)
    directions = directions.to(dtype)
    norms: torch.Tensor = directions.norm(dim=0, keepdim=True)  # Tensor.norm is unannotated
    return directions / norms


def sigreg(
    z: torch.Tensor,
    step: int,
    num_slices: int = 1024,
    t_max: float = 3.0,
    num_knots: int = 17,
    *,
    validate: bool = True,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Sketched isotropic-Gaussian regularizer (SIGReg) of embeddings ``z``.

    Args:
        z: ``(..., N, D)`` embeddings; leading dims (e.g. views) are scored separately and
            averaged. Works under bf16 autocast: the projection and statistic run in float32.
        step: training step; seeds the ``(D, num_slices)`` random directions.
        num_slices: number of random 1-D projections.
        t_max, num_knots, validate, group: as in :func:`epps_pulley`.

    Returns:
        Scalar: mean over slices and leading dims of ``epps_pulley(z @ A)``.
    """
    dtype = _check_args(z, "z", "sigreg", t_max, num_knots, group)
    directions = random_directions(z.shape[-1], num_slices, step, device=z.device, dtype=dtype)
    with torch.autocast(device_type=z.device.type, enabled=False):
        projections = z.to(dtype) @ directions  # (..., N, num_slices)
    stat, count = _statistic(projections, t_max, num_knots, group)
    if validate:
        _raise_if_invalid(stat, count, z, "z")
    return stat.mean()
