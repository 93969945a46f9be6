"""This rank's RNG states (torch, CUDA, numpy, Python), as JSON a checkpoint keeps.

:func:`~lejepa_ray.train.checkpoint.write` stores :func:`rng_state` in the checkpoint's
:func:`rng_file` for each rank, and :func:`~lejepa_ray.train.checkpoint.load` gives it back to
:func:`set_rng_state` when the run resumes on the same world size (on another one the ranks keep
their fresh seeds). Plain JSON, base64 for the torch and CUDA byte states, so that loading a
checkpoint unpickles nothing.
"""

from __future__ import annotations

import base64
import random

import numpy as np
import torch


def rng_file(rank: int) -> str:
    """Rank ``rank``'s RNG state file, relative to the checkpoint directory."""
    return f"rng/rank_{rank:05d}.json"


def rng_state() -> dict:
    """This process's RNG states: ``{"torch": b64, "cuda": [b64 per device], "numpy": [...],
    "python": [...]}``."""

    def encode(t: torch.Tensor) -> str:
        return base64.b64encode(t.cpu().numpy().tobytes()).decode()

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": encode(torch.get_rng_state()),
        "cuda": [encode(s) for s in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available()
        else [],
        "numpy": [kind, np.asarray(keys).tolist(), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }


def set_rng_state(saved: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA's only where CUDA is available)."""

    def decode(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(decode(saved["torch"]))
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([decode(s) for s in saved["cuda"]])
    kind, keys, pos, has_gauss, gauss = saved["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = saved["python"]
    random.setstate((version, tuple(internal), gauss_next))
