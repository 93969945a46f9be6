"""CPU time by process role over the windows ``data bench`` measures in: where each pipeline's
CPU goes, beyond the views themselves.

A rate says how fast a pipeline is, not what it spends: the same views can cost one pipeline
more CPU than the other in hand-offs, batching or services. :class:`CpuAccount` reads with
psutil the CPU time of this process and of every process below it, between the ``resume`` and
``pause`` that :func:`~lejepa_ray.data.bench_pipelines._measure` calls around the timed
batches, and files each process under its role. Ray Data's own stats leave the consumer's share
at zero (:mod:`~lejepa_ray.data.account` says why), so it is taken from here;
:func:`~lejepa_ray.data.bench.ray_data_overhead` sets one pipeline's account against the other's.
"""

from __future__ import annotations

import time
from collections import Counter

import psutil


class CpuAccount:
    """CPU seconds spent by role during the windows between :meth:`resume` and :meth:`pause`,
    in this process and every process below it: ``consumer`` (this process), ``workers``
    (DataLoader workers and Ray worker processes, the finished ones included through their
    parent's reaped-children times) and ``ray`` (Ray's own services). ``idle`` is what is left
    of ``cores × wall``."""

    _MINE = psutil.Process().cmdline()

    def __init__(self) -> None:
        self.used: Counter = Counter()
        self.wall = 0.0
        self._since: tuple[float, Counter] | None = None

    def resume(self) -> None:
        self._since = (time.perf_counter(), self._sample())

    def pause(self) -> None:
        if self._since is not None:
            t0, before = self._since
            self.wall += time.perf_counter() - t0
            now = self._sample()
            now.subtract(before)
            self.used.update({k: max(0.0, v) for k, v in now.items()})
            self._since = None

    @classmethod
    def _role(cls, proc: psutil.Process) -> str:
        try:
            argv = proc.cmdline()
        except psutil.Error:
            return "workers"
        cmd = " ".join(argv)
        if argv == cls._MINE or "default_worker.py" in cmd:
            return "workers"  # a DataLoader worker (a fork of this process), a Ray worker
        if "ray::" in cmd and "Agent" not in cmd:
            return "workers"  # a Ray worker, named after its task
        return "ray"  # raylet, gcs_server, dashboard, agents, log monitor

    @classmethod
    def _sample(cls) -> Counter:
        me = psutil.Process()
        out: Counter = Counter()
        t = me.cpu_times()
        out["consumer"] += t.user + t.system
        out["workers"] += t.children_user + t.children_system  # exited DataLoader workers
        for child in me.children(recursive=True):
            try:
                c = child.cpu_times()
            except psutil.Error:
                continue
            out[cls._role(child)] += c.user + c.system
            # Processes this one reaped (Ray workers that exited, under the raylet).
            out["workers"] += c.children_user + c.children_system
        return out

    def per_sample(self, samples: float) -> dict[str, float]:
        """Milliseconds of CPU per sample by role, and idle, over ``samples`` samples."""
        n = max(samples, 1)
        per = {k: 1e3 * self.used[k] / n for k in ("workers", "consumer", "ray")}
        cores = psutil.cpu_count() or 1
        per["idle"] = 1e3 * max(0.0, cores * self.wall - sum(self.used.values())) / n
        return per
