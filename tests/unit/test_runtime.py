"""lejepa_ray.launch.runtime: the logical CPUs a local instance declares; its reaper."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lejepa_ray.launch.runtime import local_num_cpus


def test_local_cluster_declares_cores_plus_training_plus_reads():
    cores = len(os.sched_getaffinity(0))
    assert local_num_cpus(0) == cores + 1
    assert local_num_cpus(2) == cores + 3  # two one-CPU training workers keep Data whole
    assert local_num_cpus(0.5) == cores + 2


def test_connect_ships_the_package_to_a_joined_cluster_and_never_joins_a_stray_one(monkeypatch):
    import ray

    import lejepa_ray
    from lejepa_ray.launch import runtime

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_JOB_ID", "02000000")  # inside `ray job submit`
    assert runtime.connect(train_cpus=2, runtime_env={"env_vars": {"A": "1"}}) is False
    package = str(Path(lejepa_ray.__file__).resolve().parent)
    # Ray's driver INFO/WARNING lines stay in its logs unless the run asks to be verbose.
    assert calls[-1] == {
        "runtime_env": {"env_vars": {"A": "1"}, "py_modules": [package]},
        "logging_level": logging.ERROR,
    }
    assert runtime.connect(verbose=True) is False and "logging_level" not in calls[-1]
    monkeypatch.delenv("RAY_JOB_ID")
    # Outside a job: a new local instance, even if `ray start` left one on this machine.
    assert runtime.connect(train_cpus=2) is True
    assert calls[-1]["address"] == "local" and calls[-1]["num_cpus"] == local_num_cpus(2)


def test_reaper_ends_its_watch_when_the_driver_exits_between_two_rounds(monkeypatch):
    from lejepa_ray.launch import reaper

    # The driver runs at the first look and is gone at the second: each round looks once, so
    # an exit between "is it there" and "is it a zombie" cannot crash the watcher.
    looks = iter([(1, "S", 5), None])
    monkeypatch.setattr(reaper, "_stat", lambda pid: next(looks))
    monkeypatch.setattr(reaper, "tree", lambda root: {})
    reaper.watch(123, interval_s=0)
