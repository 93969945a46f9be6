"""Seconds of work on a device's own timeline: CUDA events on a GPU, the host clock on a CPU.

The trainer times its device-side steps with it (``time/augment``, the data side's device
step) without a host sync per step.
"""

from __future__ import annotations

import time

import torch


class DeviceClock:
    """Seconds spent in ``with`` blocks on ``device``'s timeline: CUDA events on a GPU (no
    host sync until :meth:`seconds`), the host clock on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.host = 0.0
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def __enter__(self) -> None:
        if self.cuda:
            pair = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.events.append(pair)
            pair[0].record()
        else:
            self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.events[-1][1].record()
        else:
            self.host += time.perf_counter() - self._t0

    def seconds(self) -> float:
        """The total so far (waits for the device's recorded work to finish)."""
        if self.cuda and self.events:
            self.events[-1][1].synchronize()
        return self.host + sum(a.elapsed_time(b) for a, b in self.events) / 1e3
