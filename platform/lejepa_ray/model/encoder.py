"""The encoder LeJEPA trains: a timm backbone plus the projector, fed views of two resolutions.

How a backbone takes the small (local) views is decided by trying, not by a list of families:
the model is built on the meta device (no memory, no compute) with a few timm options and a
view of each size is pushed through it. CNNs take any size as built; ViT-style models accept
``dynamic_img_size`` (position embeddings interpolated, ``dynamic_img_pad`` pads views that are
not a multiple of the patch); Swin accepts ``strict_img_size=False``; fixed-resolution families
(MaxViT, CoAtNet, LeViT) are built for the global size and get the local views resized to the
smallest size they accept.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MLP

from lejepa_ray.config import PretrainConfig
from lejepa_ray.errors import ConfigError
from lejepa_ray.model.config import PROJECTOR_NORMS, ModelConfig

# Options tried in order; the first that accepts the global size and the local size wins.
_SIZE_OPTIONS: tuple[dict[str, Any], ...] = (
    {},
    {"dynamic_img_size": True, "dynamic_img_pad": True},
    {"strict_img_size": False},
)

NORMS: dict[str, type[nn.Module] | None] = {
    "batch": nn.BatchNorm1d,
    "layer": nn.LayerNorm,
    "none": None,
}
"""What follows each hidden layer of the projector, by ``model.projector_norm``."""
assert set(NORMS) == set(PROJECTOR_NORMS)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build the backbone so that it takes the run's views (found by :func:`resolve`)."""

    name: str
    """timm architecture."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for ``timm.create_model`` (user ``model_args`` plus size options)."""
    global_size: int = 224
    """Side of the global views in pixels."""
    local_size: int | None = None
    """Side the local views are given to the backbone at (None: no local views)."""
    local_resized: bool = False
    """True when the local views are resized up because the model takes no smaller input."""
    num_features: int = 0
    """Size of the pooled backbone features."""


def create_backbone(
    name: str, kwargs: dict[str, Any], device: str | torch.device | None = None
) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=0, **kwargs)`` on ``device``."""
    # lazy: timm takes about a second to import; only building a backbone needs it, not the
    # specs, normalization and loading helpers that export, frozen and the driver import.
    import timm

    return timm.create_model(name, pretrained=False, num_classes=0, device=device, **kwargs)


def _accepts(model: nn.Module, size: int) -> bool:
    try:
        with torch.no_grad():
            out: torch.Tensor = model(torch.empty(2, 3, size, size, device="meta"))
    except (RuntimeError, AssertionError, ValueError, IndexError):
        return False
    return out.dim() == 2


def resolve(cfg: ModelConfig, global_size: int, local_size: int | None) -> BackboneSpec:
    """Find timm options under which the backbone takes views of both sizes.

    Raises:
        ConfigError: the backbone accepts the global size under none of the options tried.
    """
    user = dict(cfg.model_args)
    fallback: tuple[dict[str, Any], nn.Module] | None = None
    options = [*_SIZE_OPTIONS, {"img_size": global_size}]
    for extra in options:
        if any(k in user for k in extra):
            continue  # the user chose this option themselves
        kwargs = {**user, **extra}
        try:
            model = create_backbone(cfg.name, kwargs, device="meta")
        except TypeError:
            continue  # this family has no such option
        if not _accepts(model, global_size):
            continue
        if local_size is None or _accepts(model, local_size):
            return BackboneSpec(
                cfg.name, kwargs, global_size, local_size, False, _feature_size(model)
            )
        fallback = fallback or (kwargs, model)
    if fallback is None:
        raise ConfigError(
            f"model.name={cfg.name} does not accept {global_size}×{global_size} images with "
            f"model_args={user} (tried {', '.join(map(str, options))}). Set "
            "data.views.global_size to the model's input size, or pass the size options it "
            "needs in model.model_args."
        )
    kwargs, model = fallback
    assert local_size is not None  # kept only when the local size failed: there is one
    reduction = max(1, int(getattr(model, "feature_info", [{}])[-1].get("reduction", 1) or 1))
    size = -(-local_size // reduction) * reduction
    while size < global_size and not _accepts(model, size):
        size += reduction
    size = min(size, global_size)
    return BackboneSpec(cfg.name, kwargs, global_size, size, True, _feature_size(model))


def resolve_backbone(cfg: PretrainConfig) -> BackboneSpec:
    """How the run's backbone is built so that it takes the run's global and local views."""
    v = cfg.data.views
    return resolve(cfg.model, v.global_size, v.local_size if v.local_views else None)


def _feature_size(model: nn.Module) -> int:
    """Width of what the model returns with ``num_classes=0``: timm's ``head_hidden_size``,
    which differs from ``num_features`` when a head convolution or pre-logits layer follows the
    pooling (MobileNetV3: 960 -> 1280)."""
    width = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if width is None:
        raise TypeError(f"{type(model).__name__} has no num_features: not a timm backbone?")
    return int(width)


def pixel_normalization(
    backbone: nn.Module, device: str | torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std ``(1, 3, 1, 1)`` on the 0-255 scale of uint8 pixels, from the backbone's
    timm ``pretrained_cfg`` (ImageNet's when it has none)."""
    pcfg = getattr(backbone, "pretrained_cfg", {}) or {}
    mean = torch.tensor(pcfg.get("mean", IMAGENET_MEAN), dtype=torch.float32, device=device)
    std = torch.tensor(pcfg.get("std", IMAGENET_STD), dtype=torch.float32, device=device)
    return (255.0 * mean).view(1, 3, 1, 1), (255.0 * std).view(1, 3, 1, 1)


class LeJEPAEncoder(nn.Module):
    """Backbone + projector. Input uint8 views, output projections of every view.

    ``forward(global_views, local_views)`` takes ``(B, V_g, 3, S_g, S_g)`` and
    ``(B, V_l, 3, S_l, S_l)`` uint8 tensors (``local_views`` may be None) and returns
    ``(V_g + V_l, B, projector_dim)`` float projections, global views first. Each resolution
    goes through the backbone in one forward; the projector (with BatchNorm by default) sees
    all views at once so its batch statistics cover every view.
    """

    # Buffers registered in __init__, declared for the type checker (nn.Module's __getattr__
    # only promises a Tensor or a Module).
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, spec: BackboneSpec, cfg: ModelConfig, device: str | torch.device | None = None
    ):
        super().__init__()
        self.spec = spec
        self.backbone = create_backbone(spec.name, spec.kwargs, device)
        hidden = [cfg.projector_hidden] * (cfg.projector_layers - 1)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.projector = MLP(
                spec.num_features,
                [*hidden, cfg.projector_dim],
                norm_layer=NORMS[cfg.projector_norm],
                activation_layer=nn.ReLU,
            )
        mean, std = pixel_normalization(self.backbone, device)
        # Not persistent: derived from the architecture, so checkpoints hold weights only.
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def _pixels(self, views: torch.Tensor, size: int) -> torch.Tensor:
        """(B, V, 3, S, S) uint8 -> (B·V, 3, size, size) normalized float."""
        x = views.flatten(0, 1).float()
        if x.shape[-1] != size:
            x = F.interpolate(
                x, size=(size, size), mode="bilinear", antialias=False, align_corners=False
            )
        return (x - self.mean) / self.std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(N, num_features)`` of uint8 images ``(N, 3, S, S)``."""
        feats: torch.Tensor = self.backbone(self._pixels(images.unsqueeze(1), images.shape[-1]))
        return feats

    def embeddings(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features ``(N, num_features)`` and projector outputs ``(N, projector_dim)``
        of uint8 images ``(N, 3, S, S)``, in one pass (registered with FSDP2 as a forward
        method, so sharded parameters are gathered for it)."""
        feats = self.features(images)
        return feats, self.projector(feats)

    def forward(
        self, global_views: torch.Tensor, local_views: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, n_global = global_views.shape[:2]
        feats = [self.backbone(self._pixels(global_views, self.spec.global_size))]
        n_views = n_global
        if local_views is not None and local_views.shape[1] > 0:
            assert self.spec.local_size is not None
            feats.append(self.backbone(self._pixels(local_views, self.spec.local_size)))
            n_views += local_views.shape[1]
        # Rows are sample-major within each resolution: (B, V) flattened.
        parts = [f.view(batch, -1, f.shape[-1]) for f in feats]
        emb = torch.cat(parts, dim=1).flatten(0, 1)  # (B·V, D)
        proj: torch.Tensor = self.projector(emb)
        # A copy, not a view: FSDP's backward hooks are attached to the module's output.
        return proj.view(batch, n_views, -1).transpose(0, 1).contiguous()  # (V, B, K)
