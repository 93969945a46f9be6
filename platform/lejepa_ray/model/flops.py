"""FLOPs of a training step counted from shapes, and model FLOPs utilization (MFU).

The backbone's forward FLOPs at each view size are counted by ``torch.utils.flop_counter`` on
a meta-device copy: every matmul, convolution and attention is counted from its shapes, no
arithmetic runs, so even ViT-gigantic costs about a second. Training costs 3× the forward
(the backward computes gradients for inputs and weights). Recomputation by activation
checkpointing is not counted: MFU measures useful model FLOPs, as in the PaLM/torchtitan
convention.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from lejepa_ray.data.config import ViewConfig
from lejepa_ray.model.config import ModelConfig
from lejepa_ray.model.encoder import BackboneSpec, LeJEPAEncoder

# Dense bf16 tensor-core peaks, TFLOP/s per device, by a substring of the device name.
# Checked in order: more specific names first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


def forward_flops(module: torch.nn.Module, *inputs: torch.Tensor | None) -> int:
    """FLOPs of ``module(*inputs)`` (meta tensors welcome: nothing is computed; None passes an
    optional input that is absent)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*inputs)
    return counter.get_total_flops()


def train_flops_per_image(spec: BackboneSpec, model_cfg: ModelConfig, views: ViewConfig) -> int:
    """Model FLOPs of one training image with all its views: 3 × forward (backbone at each
    view size, then the projector)."""
    encoder = LeJEPAEncoder(spec, model_cfg, device="meta")
    g = torch.empty(
        1,
        views.global_views,
        3,
        views.global_size,
        views.global_size,
        dtype=torch.uint8,
        device="meta",
    )
    loc = None
    if views.local_views:
        loc = torch.empty(
            1,
            views.local_views,
            3,
            views.local_size,
            views.local_size,
            dtype=torch.uint8,
            device="meta",
        )
    encoder.train()
    # BatchNorm needs 2 samples in training mode; count 2 images and halve.
    return (
        3
        * forward_flops(
            encoder,
            g.expand(2, *g.shape[1:]),
            None if loc is None else loc.expand(2, *loc.shape[1:]),
        )
        // 2
    )


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """Peak dense bf16 TFLOP/s of ``device``; None when unknown (CPUs, unlisted GPUs)."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)
