"""lejepa_ray.train.diagnostics: SIGReg's projections and RankMe's spectrum as pictures.

The numbers behind the pictures are tested, not only that a picture comes out: a Gaussian
cloud projects to N(0, 1) and its histograms follow the density, the statistics are SIGReg's
own, a collapsed cloud has one singular value."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from lejepa_ray.objective.sigreg import epps_pulley, sigreg
from lejepa_ray.train.diagnostics import (
    BINS,
    diagnostics_images,
    epps_pulley_local,
    sigreg_slices,
    write_png,
)
from lejepa_ray.train.rankme import effective_rank, singular_spectrum, spectrum_rank


def _gaussian(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_a_gaussian_cloud_projects_to_standard_normals():
    z = _gaussian(4096, 64)
    slices = sigreg_slices(z, num_projections=4, seed=7)
    assert slices.values.shape == (4096, 4) and slices.directions.shape == (64, 4)
    torch.testing.assert_close(slices.directions.norm(dim=0), torch.ones(4))
    values = slices.values.double()
    assert values.mean(0).abs().max() < 0.06  # 4 sigma of the mean of 4096 N(0, 1)
    assert (values.std(0) - 1).abs().max() < 0.05
    # The histograms drawn are those of these values: each follows the N(0, 1) density.
    edges = np.linspace(-4, 4, BINS + 1)
    centres = (edges[1:] + edges[:-1]) / 2
    density = np.exp(-0.5 * centres**2) / math.sqrt(2 * math.pi)
    for column in values.numpy().T:
        hist, _ = np.histogram(column, bins=edges, density=True)
        assert np.abs(hist - density).max() < 0.05
    # Epps-Pulley's null mean is about 1.05: a Gaussian sample scores a few at most.
    assert slices.statistics.max() < 6.0


def test_the_statistics_are_sigreg_s_for_the_same_directions():
    """Not centred, not scaled: the mean of the K statistics is ``sigreg(z, step=seed,
    num_slices=K)``, so a shifted or stretched cloud scores as SIGReg scores it."""
    z = 1.5 * _gaussian(512, 32, seed=1) + 0.7
    slices = sigreg_slices(z, num_projections=8, seed=11)
    expected = sigreg(z, step=11, num_slices=8)
    assert float(slices.statistics.mean()) == pytest.approx(float(expected), rel=1e-4)
    assert slices.statistics.min() > 20  # far from N(0, 1), as SIGReg sees it
    x = _gaussian(300, 5, seed=2) * torch.tensor([1.0, 2.0, 0.1, 1.0, 1.0])
    torch.testing.assert_close(epps_pulley_local(x), epps_pulley(x).double(), rtol=1e-4, atol=1e-5)


def test_a_collapsed_cloud_has_one_dominant_singular_value():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(512, 1, generator=gen) @ torch.randn(1, 64, generator=gen)  # rank 1
    p = singular_spectrum(z)
    assert p.shape == (64,) and p.dtype == torch.float64
    assert p[0] > 0.9999 and p[1:].max() < 1e-6
    assert spectrum_rank(p) == pytest.approx(1.0, abs=1e-3)
    full = singular_spectrum(_gaussian(512, 16))
    assert float(full.sum()) == pytest.approx(1.0)
    assert bool((full[:-1] >= full[1:]).all())  # sorted, largest first
    assert full.max() < 2.0 / 16  # an isotropic cloud spreads them evenly
    assert spectrum_rank(full) == pytest.approx(effective_rank(_gaussian(512, 16)))
    assert spectrum_rank(full) > 15


def test_the_images_are_hwc_uint8_and_deterministic_in_the_seed():
    backbone, projector = _gaussian(256, 128), _gaussian(256, 16, seed=1)
    images = diagnostics_images(backbone, projector, seed=5)
    assert set(images) == {
        "sigreg/projections_backbone",
        "sigreg/projections_projector",
        "sigreg/spectrum",
    }
    for image in images.values():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.std() > 10  # something is drawn
    assert images["sigreg/projections_backbone"].shape == (250, 920, 3)  # 4 panels at 100 dpi
    assert images["sigreg/spectrum"].shape == (320, 500, 3)
    again = diagnostics_images(backbone, projector, seed=5)
    for tag, image in images.items():
        np.testing.assert_array_equal(image, again[tag])
    other = diagnostics_images(backbone.numpy(), projector.numpy(), seed=6)
    assert not np.array_equal(
        other["sigreg/projections_projector"], images["sigreg/projections_projector"]
    )
    np.testing.assert_array_equal(other["sigreg/spectrum"], images["sigreg/spectrum"])


def test_either_matrix_may_be_left_out_and_non_finite_values_are_drawn_not_raised():
    z = _gaussian(64, 8)
    assert set(diagnostics_images(None, z)) == {"sigreg/projections_projector", "sigreg/spectrum"}
    assert diagnostics_images(None, None) == {}
    z[3, :] = float("nan")  # a diverging run: a picture that says so, never an exception
    slices = sigreg_slices(z, num_projections=2)
    assert torch.isnan(slices.statistics).all()
    assert set(diagnostics_images(z, None)) == {"sigreg/projections_backbone", "sigreg/spectrum"}
    with pytest.raises(ValueError, match=r"shape \(N, D\).*got \(8,\)"):
        diagnostics_images(torch.zeros(8), None)


def test_write_png_writes_the_image(tmp_path):
    image = diagnostics_images(None, _gaussian(64, 8))["sigreg/spectrum"]
    write_png(image, str(tmp_path / "deep" / "spectrum.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "deep" / "spectrum.png")), image)
