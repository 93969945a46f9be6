"""Shared fixtures. Tests import their image helpers from ``tests/images.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for every test that needs it (starting one takes 5-10 s).

    It declares the machine's cores plus 2 for two one-CPU training workers, the same rule
    ``lejepa_ray.runtime`` applies, so Ray Data keeps CPUs while a TorchTrainer runs.
    """
    import ray

    from lejepa_ray.runtime import connect

    # The dashboard serves the state API that Ray Train's placement-group cleaner needs when a
    # sweep's trial is stopped (see lejepa_ray.sweep.run_sweep).
    connect(train_cpus=2, log_to_driver=False, dashboard=True)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
