"""Shared fixtures, and the split of the suite.

``tests/unit``: one process, no Ray started. ``tests/integration``: a test that starts Ray (the
:func:`ray_cluster` fixture), the S3 server (:func:`s3_server`), or other processes (mp.spawn,
the console script, ``ray`` CLI, a wheel build, ``python -c``), and any test marked ``slow``; each
is marked ``integration`` here, so ``-m "not integration"`` runs the unit tests of any selection.

Both folders are packages (``unit``, ``integration``), so a module can have a test file of the
same name in each; the plain modules here (``images.py``, ``procs.py``, ``s3.py``, the
``*_helpers.py`` shared by the two files of a module) are imported by their bare names, this
folder being on ``sys.path``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Ray Train's controller takes one report from each worker per health-check poll (every 2 s by
# default) and a worker's next report waits for it (docs/training.md, "Metrics"). The suite's
# runs report every step or two, a fraction of a second apart, so each report would stall
# training until the next poll. The controller reads the interval from the environment of the
# process that calls `fit` (Ray passes it on in the controller's runtime_env): this process's
# runs, and the child processes that inherit the environment (procs.clean_env). Tests whose
# timing was calibrated at the default poll set it back to 2 s.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

sys.path.insert(0, str(Path(__file__).parent))
# The benchmarks' own helpers (chaos.py: fault injection) are test tools too, not product code.
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "benchmarks"))

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


def _ray_running() -> bool:
    ray = sys.modules.get("ray")  # never import Ray just to ask
    return ray is not None and ray.is_initialized()


@pytest.fixture(autouse=True)
def _unit_tests_start_no_ray(request):
    """A unit test that starts Ray (Ray Data starts a 2-CPU instance on first use) fails.

    Besides breaking the unit/integration split, such an instance outlives the test, and the
    integration tests' :func:`ray_cluster` would find it instead of the instance it sizes for
    training plus data: with every CPU taken by the training workers, Ray Data never runs and
    the training waits forever (how CI hung once)."""
    yield
    if INTEGRATION not in Path(request.node.path).parents and _ray_running():
        import ray

        ray.shutdown()
        pytest.fail("this unit test started Ray; move it to tests/integration (ray_cluster)")


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

    assert not ray.is_initialized(), (
        "a Ray instance that ray_cluster did not start is connected: it lacks the CPUs Ray "
        "Data needs beside the training workers (see _unit_tests_start_no_ray)"
    )
    # The dashboard serves the state API that Ray Train's placement-group cleaner needs when a
    # sweep's trial is stopped (see lejepa_ray.tune.sweep.run_sweep).
    connect(train_cpus=2, log_to_driver=False, dashboard=True)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
