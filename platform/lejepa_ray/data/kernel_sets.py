"""The view-kernel interface: which code turns a view's drawn parameters into its pixels.

Views are made in two places, each looked up by name in a registry here:

- on the data CPUs, by a **kernel set** (:class:`ViewKernels`), ``data.views.kernels``, from
  :data:`KERNELS`: ``pil`` (``pil_kernels``, the reference: torchvision's bytes) or ``fast``
  (``view_kernels``: torch and OpenCV, the default). Either makes whole views, or, when the
  photometric ops are left to the device, plain crops (``photometric=False``);
- on the training device, by an optional **device step** (:data:`DeviceStep`),
  ``data.augment_on``, from :data:`DEVICE_STEPS`: none for ``cpu``; for ``device``, the
  batched ops of ``device_views`` on the parameters the crops carry.

The trainer asks :func:`device_augment` for its step and applies it when there is one; it
never reads ``data.augment_on``. To add a kernel set, add its loader to :data:`KERNELS` (and
its name to ``data.views.kernels``' check in ``data.config``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from lejepa_ray.data import device_views, pil_kernels
from lejepa_ray.data.config import DataConfig, ViewConfig
from lejepa_ray.data.view_params import ViewParams
from lejepa_ray.errors import check_field


@runtime_checkable
class ViewKernels(Protocol):
    """A set of kernels that make a view's pixels on the data CPUs, one view at a time.

    A module with these two functions is one (``pil_kernels``, ``view_kernels``). They must
    pickle by reference (module-level functions): a ``ViewMaker`` keeps them, and is sent
    pickled to DataLoader workers started by spawn."""

    def prepare(self, img: Image.Image, /) -> Any:
        """The decoded RGB picture as :meth:`render` crops it; called once per sample."""
        ...

    def render(
        self,
        source: Any,
        p: ViewParams,
        size: int,
        solarize_threshold: int,
        out: np.ndarray,
        clock: dict[str, float] | None = None,
        photometric: bool = True,
        /,
    ) -> None:
        """Write the view of ``source`` (from :meth:`prepare`) with parameters ``p`` into
        ``out``, uint8 (3, size, size), ``size`` in pixels. ``clock``, when given, adds each
        op's seconds under its name. ``photometric=False``: the crop and resize only."""
        ...


def _pil() -> ViewKernels:
    return pil_kernels


def _fast() -> ViewKernels:
    # lazy: OpenCV is needed by the fast kernels only; the trainer (device_augment) and the
    # pil kernels run on machines without it (the GPU check's).
    from lejepa_ray.data import view_kernels

    return view_kernels


KERNELS: dict[str, Callable[[], ViewKernels]] = {"pil": _pil, "fast": _fast}
"""Kernel sets by ``data.views.kernels`` name: each loads its set (importing what it needs)."""


def kernels(name: str) -> ViewKernels:
    """The kernel set registered as ``name`` (``data.views.kernels``).

    Raises:
        ConfigError: no kernel set has that name; the message lists the registered ones.
    """
    check_field(
        name in KERNELS,
        "data.views.kernels",
        name,
        f"a registered kernel set, one of {', '.join(sorted(KERNELS))}",
    )
    return KERNELS[name]()


DeviceStep = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
"""A batch of the views stream to the batch the encoder takes, on the training device."""


def _on_device(views: ViewConfig) -> DeviceStep:
    return functools.partial(device_views.augment_batch, cfg=views)


DEVICE_STEPS: dict[str, Callable[[ViewConfig], DeviceStep] | None] = {
    "cpu": None,
    "device": _on_device,
}
"""The device step by ``data.augment_on``, made from the view recipe; None: the data tasks'
kernel set applies every op, and the trainer has nothing left to do."""


def device_augment(cfg: DataConfig) -> DeviceStep | None:
    """What the trainer applies to each batch before its step (``global`` (B, V_g, 3, S_g,
    S_g) and ``local`` (B, V_l, 3, S_l, S_l) with their ``*_params`` to float32 views on the
    0-255 scale, parameters consumed), or None when the views arrive finished.

    Raises:
        ConfigError: ``data.augment_on`` names no registered placement.
    """
    make = _device_step_maker(cfg)
    return None if make is None else make(cfg.views)


def photometric_in_data(cfg: DataConfig) -> bool:
    """Whether the data tasks' kernel set applies the photometric ops (no device step), or
    only crops and ships each view's parameters for the device step."""
    return _device_step_maker(cfg) is None


def _device_step_maker(cfg: DataConfig) -> Callable[[ViewConfig], DeviceStep] | None:
    check_field(
        cfg.augment_on in DEVICE_STEPS,
        "data.augment_on",
        cfg.augment_on,
        f"one of {', '.join(DEVICE_STEPS)}",
    )
    return DEVICE_STEPS[cfg.augment_on]
