"""lejepa_ray.runtime: the logical CPUs a local instance declares."""

from __future__ import annotations

import os

from lejepa_ray.runtime import local_num_cpus


def test_local_cluster_declares_cores_plus_training_plus_reads():
    cores = len(os.sched_getaffinity(0))
    assert local_num_cpus(0) == cores + 1
    assert local_num_cpus(2) == cores + 3  # two one-CPU training workers keep Data whole
    assert local_num_cpus(0.5) == cores + 2
