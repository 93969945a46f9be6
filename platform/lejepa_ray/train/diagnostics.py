"""SIGReg and RankMe as pictures: what the regularizer tests, and the spectrum RankMe sums up.

Given held-out embeddings ``z`` (N, D), the backbone's pooled features or the projector's
outputs (what :func:`lejepa_ray.train.rankme.heldout_embeddings` returns):

- **SIGReg's view** (:func:`sigreg_slices`, :func:`projections_image`): ``z`` projected on K
  random unit directions drawn as :func:`lejepa_ray.objective.sigreg.random_directions` draws
  them, neither centred nor scaled (SIGReg tests the raw projections against N(0, 1), so a
  shifted or stretched cloud is what it penalizes), one histogram per direction against the
  N(0, 1) density, titled with its Epps-Pulley statistic (about 1 for a Gaussian sample: the
  null expectation is ≈1.05 with the default quadrature; a collapsed direction scores O(N)).
  SIGReg is trained on the projector's outputs only; the backbone's are drawn for comparison.
- **RankMe's spectrum** (:func:`spectrum_image`): the normalized singular values
  ``σ_k / Σ_j σ_j`` (:func:`lejepa_ray.train.rankme.singular_spectrum`), sorted, on log-log
  axes, with the RankMe value (``exp`` of their entropy) in the legend.

Pictures come back as uint8 (H, W, 3) arrays, TensorBoard's ``add_image(...,
dataformats="HWC")``; :func:`write_png` writes one. Drawn on matplotlib ``Figure`` objects
with the Agg canvas (no pyplot: no process-wide backend, no global figure list), so it is safe
in a training worker. Deterministic given the seed; about 0.2 s for two (512, 512) matrices
on one CPU core.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from lejepa_ray import storage
from lejepa_ray.objective.sigreg import quadrature, random_directions
from lejepa_ray.train.rankme import singular_spectrum, spectrum_rank

NUM_PROJECTIONS = 4
"""Histograms drawn per embedding matrix."""
BINS = 40
"""Histogram bins over the drawn range."""
SPECTRUM_FLOOR = 1e-12
"""Normalized singular values below this are drawn at it: a log axis has no zero."""
DPI = 100


@dataclass(frozen=True)
class Slices:
    """``z`` as SIGReg sees it along a few random directions."""

    directions: torch.Tensor
    """float32 (D, K): unit columns, ``random_directions(D, K, seed)``."""
    values: torch.Tensor
    """float32 (N, K): ``z @ directions``, not centred or scaled."""
    statistics: torch.Tensor
    """float64 (K,): the Epps-Pulley statistic of each column against N(0, 1), as
    ``sigreg.epps_pulley`` computes it in one process (NaN for a non-finite column)."""


def sigreg_slices(
    z: torch.Tensor | np.ndarray,
    num_projections: int = NUM_PROJECTIONS,
    seed: int = 0,
    t_max: float = 3.0,
    num_knots: int = 17,
) -> Slices:
    """``z`` (N, D) projected on ``num_projections`` random unit directions seeded by
    ``seed``, with each projection's Epps-Pulley statistic (``t_max``, ``num_knots``: SIGReg's
    quadrature, ``loss.t_max`` and ``loss.num_knots``)."""
    x = _matrix(z)
    directions = random_directions(x.shape[1], num_projections, seed)
    values = x @ directions
    return Slices(directions, values, epps_pulley_local(values, t_max, num_knots))


def epps_pulley_local(x: torch.Tensor, t_max: float = 3.0, num_knots: int = 17) -> torch.Tensor:
    """The Epps-Pulley statistic (K,) float64 of each column of ``x`` (N, K), over this
    process's samples only: the number ``sigreg.epps_pulley`` gives without torch.distributed
    (tested equal), with its quadrature. Not ``epps_pulley`` itself: under torch.distributed it
    all-reduces over every rank, and these pictures are drawn on rank 0 alone, where that
    collective would wait forever. A non-finite column gives NaN."""
    t, phi, weights = quadrature(t_max, num_knots, dtype=torch.float64)
    angles = x.double().unsqueeze(-1) * t  # (N, K, J): small, K is a handful of directions
    err = (angles.cos().mean(0) - phi).square() + angles.sin().mean(0).square()
    return (err * weights).sum(-1) * x.shape[0]


def projections_image(slices: Slices, title: str) -> np.ndarray:
    """One histogram per direction of ``slices`` (density, ``BINS`` bins) against the N(0, 1)
    density, its Epps-Pulley statistic, mean and standard deviation above it: uint8 (H, W, 3).
    The range is [-4, 4], widened to the 99.5th percentile of |values| where they spread
    further."""
    values = slices.values.double().numpy()
    k = values.shape[1]
    fig = _figure(2.3 * k, 2.5)
    axes = fig.subplots(1, k, squeeze=False)[0]
    for j, ax in enumerate(axes):
        column = values[:, j][np.isfinite(values[:, j])]
        reach = max(4.0, float(np.percentile(np.abs(column), 99.5))) if column.size else 4.0
        grid = np.linspace(-reach, reach, 400)
        if column.size:
            # One filled step path, not ax.hist's bar per bin: a third of the drawing time.
            density, edges = np.histogram(column, bins=BINS, range=(-reach, reach), density=True)
            ax.stairs(density, edges, fill=True, color="#4c72b0")
        ax.plot(grid, np.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi), color="#dd8452", lw=1.5)
        mean, std = (float(column.mean()), float(column.std())) if column.size else (math.nan,) * 2
        stat = float(slices.statistics[j])
        ax.set_title(f"EP {stat:.3g}\nμ {mean:.2f}  σ {std:.2f}", fontsize=8)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.1, top=0.74, wspace=0.08)
    return figure_array(fig)


def spectrum_image(embeddings: dict[str, torch.Tensor | np.ndarray], title: str = "") -> np.ndarray:
    """The sorted normalized singular values of each named matrix (N, D) of ``embeddings``,
    one curve each on log-log axes, RankMe in the legend: uint8 (H, W, 3). A matrix with a
    non-finite value is listed as such and not drawn."""
    fig = _figure(5.0, 3.2)
    ax = fig.subplots()
    for name, z in embeddings.items():
        x = _matrix(z)
        if not torch.isfinite(x).all():
            ax.plot([], [], label=f"{name}: non-finite values")
            continue
        spectrum = singular_spectrum(x)
        rank = spectrum_rank(spectrum)  # RankMe's number, from the one SVD
        p = spectrum.clamp_min(SPECTRUM_FLOOR).numpy()
        ax.loglog(np.arange(1, len(p) + 1), p, label=f"{name}: RankMe {rank:.1f} of {len(p)}")
    ax.set_xlabel("k (singular values, largest first)", fontsize=8)
    ax.set_ylabel("σ_k / Σ σ", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title or "normalized singular values (RankMe = exp of their entropy)", fontsize=9)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.14, top=0.91)
    return figure_array(fig)


def diagnostics_images(
    backbone_z: torch.Tensor | np.ndarray | None,
    projector_z: torch.Tensor | np.ndarray | None,
    seed: int = 0,
    num_projections: int = NUM_PROJECTIONS,
) -> dict[str, np.ndarray]:
    """The pictures of held-out embeddings, by TensorBoard tag, each uint8 (H, W, 3):
    ``sigreg/projections_backbone``, ``sigreg/projections_projector`` (:func:`projections_image`)
    and ``sigreg/spectrum`` (:func:`spectrum_image`, both matrices on one plot).

    Args:
        backbone_z: (N, D) pooled backbone features, or None to leave them out.
        projector_z: (N, K) projector outputs (what SIGReg is trained on), or None.
        seed: seeds the random directions (the step, for new ones at every checkpoint).
        num_projections: histograms per matrix.
    """
    images: dict[str, np.ndarray] = {}
    named = {"backbone": backbone_z, "projector": projector_z}
    for name, z in named.items():
        if z is None:
            continue
        x = _matrix(z)
        slices = sigreg_slices(x, num_projections, seed)
        title = (
            f"{name} ({x.shape[0]} × {x.shape[1]}) on {num_projections} random unit directions "
            "(seed " + str(seed) + "), against N(0, 1)"
        )
        images[f"sigreg/projections_{name}"] = projections_image(slices, title)
    present = {name: z for name, z in named.items() if z is not None}
    if present:
        images["sigreg/spectrum"] = spectrum_image(present)
    return images


def figure_array(fig: Any) -> np.ndarray:
    """A matplotlib ``Figure`` rendered by the Agg canvas: uint8 (H, W, 3), H and W in pixels
    (figure inches × ``DPI``)."""
    # lazy: matplotlib takes about a second to import; only drawing needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    # Fixed margins (set by the callers) rather than tight_layout, which measures every
    # label by drawing the figure once more: 40% of the time.
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba: np.ndarray = np.asarray(canvas.buffer_rgba())  # (H, W, 4) uint8
    return rgba[..., :3].copy()


def write_png(image: np.ndarray, uri: str) -> None:
    """Write ``image`` uint8 (H, W, 3) as a PNG at a local path or a URI (parents created)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    storage.write_bytes(uri, buffer.getvalue())


def _figure(width: float, height: float) -> Any:
    # lazy: matplotlib takes about a second to import; only drawing needs it.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _matrix(z: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``z`` as a float32 CPU tensor (N, D), or a ValueError that says what it was."""
    x = torch.as_tensor(z).detach().float().cpu()
    if x.ndim != 2 or min(x.shape) < 1:
        raise ValueError(
            f"diagnostics need embeddings of shape (N, D), N samples of D features; got "
            f"{tuple(x.shape)}."
        )
    return x
