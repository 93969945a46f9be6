"""Connecting to Ray: join the cluster of a ``ray job submit`` / ``RAY_ADDRESS``, or start one.

Why a local instance declares more CPUs than the machine has: Ray Train reserves the CPUs of its
workers for the whole run, and Ray Data only schedules its read tasks and transform actors on
what is left. A 2-core laptop that declares 2 CPUs to run 2 one-CPU training workers leaves
Ray Data nothing and the first epoch waits forever. We declare the machine's cores *plus* the
CPUs the training workers reserve, so the data pipeline keeps a whole machine's worth of
logical CPUs, plus one for its read tasks: they are light I/O, but if the transform actors
hold every CPU the reads cannot be scheduled and the actors starve (measured on 2 cores: 58
instead of 78 samples/s). The operating system shares the real cores between training, reading
and decoding, which is what a single machine has to do anyway. On a cluster nothing is added:
size the CPU nodes.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import ray

import lejepa_ray
from lejepa_ray.compat import quiet_worker_logs
from lejepa_ray.errors import ConfigError
from lejepa_ray.launch import reaper
from lejepa_ray.model.config import ScalingConfig


def local_num_cpus(train_cpus: float) -> int:
    """Logical CPUs for a local Ray instance: the machine's cores, plus what training reserves,
    plus one for Ray Data's read tasks."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return int(cores or 1) + math.ceil(train_cpus) + 1


def joins_cluster() -> bool:
    """True where :func:`connect` joins a running cluster (``ray job submit``, ``RAY_ADDRESS``)
    or is connected already, False where it would start an embedded instance here."""
    return ray.is_initialized() or bool(
        os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID")
    )


def check_local_gpus(scaling: ScalingConfig) -> None:
    """Refuse GPU workers that a local instance could never hold, before it starts: Ray would
    wait for them for ever. On a cluster the GPUs are the cluster's (``cluster-check``).

    Raises:
        ConfigError: ``scaling.use_gpu`` with fewer GPUs here than the fewest workers the run
            can start with (a sweep's trials beyond the GPUs wait their turn).
    """
    if not scaling.use_gpu or joins_cluster():
        return
    # lazy: torch takes seconds to import; only a GPU run started here needs to count them.
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < scaling.min_workers:
        raise ConfigError(
            f"scaling.use_gpu=true asks for {scaling.min_workers} GPU worker(s), and this "
            f"machine has {have} GPU(s) for the local Ray instance it would start. Set "
            "scaling.use_gpu=false to train on CPUs, lower scaling.num_workers, or submit to a "
            "cluster with GPUs (`ray job submit`, or RAY_ADDRESS)."
        )


def connect(
    train_cpus: float = 0.0,
    local_resources: dict[str, float] | None = None,
    dashboard: bool = False,
    verbose: bool = False,
    prefixes: bool = False,
    **init_kwargs: Any,
) -> bool:
    """Connect this process to Ray; returns True when it started a local instance.

    Inside ``ray job submit`` (or with ``RAY_ADDRESS`` set) it joins that cluster and ships
    this process's ``lejepa_ray`` package to every worker (``py_modules``), so the Train
    workers and Tune trials run the code the job was submitted with, not whatever version the
    nodes had installed. Otherwise it starts an embedded instance (never one that ``ray start``
    left running on this machine) with :func:`local_num_cpus` logical CPUs, and the dashboard
    only when ``dashboard`` is set (a sweep needs its state API: see ``sweep.run_sweep``),
    watched by :mod:`lejepa_ray.launch.reaper` so that a killed driver leaves no Ray process behind.
    ``local_resources`` are custom resources that instance's one node declares (a cluster's
    nodes declare their own). Already connected: nothing to do.

    Unless ``verbose``, the console shows our lines only: Ray's driver logs below ERROR and its
    workers' bookkeeping (``compat.quiet_worker_logs``) are left to the session's log files,
    and worker lines lose Ray's ``(Actor pid=…)`` prefix unless ``prefixes``.
    """
    if ray.is_initialized():
        return False
    if not verbose:
        init_kwargs.setdefault("logging_level", logging.ERROR)
    if os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"):
        env = dict(init_kwargs.pop("runtime_env", None) or {})
        env["py_modules"] = [*env.get("py_modules", []), package_dir()]
        ray.init(runtime_env=env, **init_kwargs)
        started = False
    else:
        init_kwargs["include_dashboard"] = dashboard
        ray.init(
            address="local",
            num_cpus=local_num_cpus(train_cpus),
            resources=local_resources or None,
            **init_kwargs,
        )
        started = True
        reaper.start()  # so that a killed driver leaves none of the instance's processes
    if not verbose:
        quiet_worker_logs(prefixes, raylet_only=init_kwargs.get("log_to_driver") is False)
    return started


def package_dir() -> str:
    """The directory of the ``lejepa_ray`` package this process imported."""
    return str(Path(lejepa_ray.__file__).resolve().parent)
