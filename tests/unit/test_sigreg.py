"""lejepa_ray.objective.sigreg: the statistic, its gradient, its cost shape, bad input, and
exactness across ranks (2 gloo processes).

Multi-process, Ray and slow tests: ``tests/integration/test_sigreg.py``."""

from __future__ import annotations

import math

import pytest
import torch

from lejepa_ray.objective import sigreg as sigreg_module
from lejepa_ray.objective.sigreg import epps_pulley, quadrature, random_directions, sigreg


def reference_epps_pulley(x: torch.Tensor, t_max: float = 3.0, num_knots: int = 17):
    """Independent float64 reference: complex ECF on the full symmetric grid [−t_max, t_max]
    (2·num_knots − 1 points), integrated by torch.trapezoid, no symmetry folding."""
    x = x.double()
    t = torch.linspace(-t_max, t_max, 2 * num_knots - 1, dtype=torch.float64)
    ecf = torch.exp(1j * x.unsqueeze(-1) * t).mean(-3)  # (..., K, T)
    phi = torch.exp(-0.5 * t**2)
    integrand = (ecf - phi).abs().square() * phi
    return x.shape[-2] * torch.trapezoid(integrand, t, dim=-1)


def reference_sigreg(z: torch.Tensor, step: int, num_slices: int) -> torch.Tensor:
    a = random_directions(z.shape[-1], num_slices, step, dtype=torch.float64)
    return reference_epps_pulley(z.double() @ a).mean()


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Force the chunked code path to cut every tensor into many small blocks."""
    monkeypatch.setitem(sigreg_module._CHUNK_ELEMENTS, "cpu", 7)


def test_quadrature_is_the_official_trapezoid():
    t, phi, weights = quadrature(3.0, 17, dtype=torch.float64)
    dt = 3.0 / 16
    assert torch.allclose(t, torch.arange(17, dtype=torch.float64) * dt)
    expected = torch.full((17,), 2 * dt, dtype=torch.float64)
    expected[[0, -1]] = dt
    assert torch.allclose(weights, expected * torch.exp(-0.5 * t**2), rtol=1e-15)
    assert torch.allclose(phi, torch.exp(-0.5 * t**2))


@pytest.mark.parametrize("shape", [(40, 5), (3, 33, 4), (2, 2, 17, 3)])
@pytest.mark.parametrize("knots", [3, 17, 21])
def test_epps_pulley_matches_independent_reference(shape, knots):
    x = 1.3 * torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = epps_pulley(x, t_max=2.5, num_knots=knots)
    assert got.shape == shape[:-2] + shape[-1:]
    torch.testing.assert_close(got, reference_epps_pulley(x, 2.5, knots), rtol=1e-10, atol=1e-12)


def test_chunking_changes_nothing(tiny_chunks):
    x = torch.randn(3, 29, 11, dtype=torch.float64, requires_grad=True)
    got = epps_pulley(x)
    (grad,) = torch.autograd.grad(got.sum(), x)
    ref_x = x.detach().clone().requires_grad_(True)
    ref = reference_epps_pulley(ref_x)
    (ref_grad,) = torch.autograd.grad(ref.sum(), ref_x)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)


def test_sigreg_float32_matches_float64_reference():
    z = torch.randn(256, 48, generator=torch.Generator().manual_seed(2))
    got = sigreg(z, step=5, num_slices=128)
    assert got.dtype == torch.float32 and got.dim() == 0
    torch.testing.assert_close(got.double(), reference_sigreg(z, 5, 128), rtol=1e-5, atol=0)


def test_directions_are_unit_seeded_by_step_and_fresh_each_step():
    a = random_directions(64, 100, step=3)
    torch.testing.assert_close(a.norm(dim=0), torch.ones(100))
    assert torch.equal(a, random_directions(64, 100, step=3))
    assert not torch.allclose(a, random_directions(64, 100, step=4))
    z = torch.randn(128, 64)
    assert sigreg(z, 3, 100).item() == sigreg(z, 3, 100).item()
    assert sigreg(z, 3, 100).item() != sigreg(z, 4, 100).item()


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_statistic_over_n_converges_to_population_integral(sigma):
    """For z ~ N(0, σ²I), sigreg/N → ∫|e^{−σ²t²/2} − e^{−t²/2}|² e^{−t²/2} dt (same quadrature);
    the excess is the sampling term ∫(1 − e^{−σ²t²})e^{−t²/2}dt / N."""
    t, phi, w = quadrature(dtype=torch.float64)
    population = (w * (torch.exp(-0.5 * sigma**2 * t**2) - phi).square()).sum().item()
    gen = torch.Generator().manual_seed(3)
    errors = []
    for n in (64, 1024, 32768):
        z = sigma * torch.randn(n, 32, generator=gen, dtype=torch.float64)
        errors.append(abs(sigreg(z, step=1, num_slices=256).item() / n - population) / population)
    assert errors[-1] < 0.01, errors
    assert errors[0] > 5 * errors[-1], errors


def test_null_mean_matches_theory():
    """Under H0 the expected statistic is ∫(1 − e^{−t²}) e^{−t²/2} dt (same quadrature)."""
    _, phi, w = quadrature(dtype=torch.float64)
    null_mean = (w * (1 - phi.square())).sum().item()
    assert null_mean == pytest.approx(1.0525, abs=1e-3)
    # 16384 independent columns of 256 N(0,1) samples each.
    x = torch.randn(64, 256, 256, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    stats = epps_pulley(x).flatten()
    stderr = stats.std().item() / math.sqrt(stats.numel())
    assert abs(stats.mean().item() - null_mean) < 4 * stderr
    # Through random slices of isotropic Gaussian embeddings: projections are N(0,1) too.
    z = torch.randn(200, 256, 16, generator=torch.Generator().manual_seed(5))
    sliced = torch.stack([sigreg(z[i], step=i, num_slices=64) for i in range(len(z))])
    stderr = sliced.std().item() / math.sqrt(len(sliced))
    assert abs(sliced.mean().item() - null_mean) < 4 * stderr


def test_collapsed_embeddings_score_high_and_gradient_spreads_them():
    gen = torch.Generator().manual_seed(6)
    center = torch.randn(1, 32, generator=gen)
    collapsed = center.expand(256, 32)
    assert sigreg(collapsed, 0, 256).item() > 50 * sigreg(torch.randn(256, 32), 0, 256).item()
    # Nearly collapsed rows (exactly identical rows get identical gradients, so they can only
    # move together): gradient descent on SIGReg alone pulls them apart.
    z = (collapsed + 1e-2 * torch.randn(256, 32, generator=gen)).requires_grad_(True)
    start_spread, start_loss = z.detach().std(0).mean().item(), sigreg(z, 0, 256).item()
    opt = torch.optim.SGD([z], lr=2.0)
    for step in range(30):
        opt.zero_grad()
        sigreg(z, step, 256).backward()
        opt.step()
    assert z.detach().std(0).mean().item() > 10 * start_spread
    assert sigreg(z, 0, 256).item() < 0.1 * start_loss


def test_gradcheck_float64(tiny_chunks):
    x = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: epps_pulley(a, num_knots=5), (x,))
    z = torch.randn(2, 10, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: sigreg(a, 2, num_slices=6, num_knots=7), (z,))


def test_bf16_autocast_computes_the_statistic_in_float32():
    torch.manual_seed(7)
    model = torch.nn.Linear(24, 16)
    x = torch.randn(64, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = model(x)
        loss = sigreg(z, 0, 64)
    assert z.dtype == torch.bfloat16
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, sigreg(z.float(), 0, 64))  # same bf16 embeddings, fp32 stat
    loss.backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: sigreg(torch.randn(1, 8), 0), "at least 2 samples"),
        (lambda: epps_pulley(torch.randn(1, 8)), "at least 2 samples"),
        (lambda: sigreg(torch.randn(8), 0), r"shape \(\.\.\., N, features\)"),
        (lambda: epps_pulley(torch.tensor(1.0)), r"got a 0-d tensor"),
        (lambda: sigreg(torch.randn(8, 4), 0, num_knots=16), "odd integer"),
        (lambda: epps_pulley(torch.randn(8, 4), num_knots=1), "odd integer"),
        (lambda: epps_pulley(torch.randn(8, 4), t_max=0.0), "t_max must be positive"),
        (lambda: sigreg(torch.ones(8, 4, dtype=torch.int64), 0), "floating-point"),
        (lambda: sigreg(torch.randn(8, 4), -1), "non-negative int"),
        (lambda: sigreg(torch.randn(8, 4), 0, num_slices=0), "num_slices"),
        (lambda: sigreg(torch.full((8, 4), float("nan")), 0), "32 non-finite"),
        (lambda: epps_pulley(torch.tensor([[0.0], [float("inf")]])), "1 non-finite"),
    ],
)
def test_bad_input_raises_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_validate_false_leaves_non_finite_handling_to_the_caller():
    assert torch.isnan(sigreg(torch.full((8, 4), float("nan")), 0, validate=False))
