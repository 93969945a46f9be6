"""Shared fixtures. Tests import their image helpers from ``tests/images.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# The benchmarks' own helpers (chaos.py: fault injection) are test tools too, not product code.
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A local S3 endpoint (moto's server), with this process's environment pointing AWS
    clients at it: the Ray instance of :func:`ray_cluster` starts after it, so its workers
    inherit the same environment, as a cluster's nodes get theirs from ``cluster.yaml``."""
    import s3

    server = s3.start(tmp_path_factory.mktemp("s3"))
    before = s3.apply_env(server)
    yield server
    s3.restore_env(before)
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray instance for every test that needs it (starting one takes 5-10 s).

    It declares the machine's cores plus 2 for two one-CPU training workers, the same rule
    ``lejepa_ray.launch.runtime`` applies, so Ray Data keeps CPUs while a TorchTrainer runs.
    """
    import ray

    from lejepa_ray.launch.runtime import connect

    # The dashboard serves the state API that Ray Train's placement-group cleaner needs when a
    # sweep's trial is stopped (see lejepa_ray.tune.sweep.run_sweep).
    connect(train_cpus=2, log_to_driver=False, dashboard=True)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
