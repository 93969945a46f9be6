"""lejepa_ray.data.views and .config: shapes, dtypes, determinism, odd images, bad values, and
agreement with torchvision's transforms (the reference), op by op and for whole views.

The one-process tests are in ``tests/unit/test_views.py``."""

from __future__ import annotations

import os
import subprocess
import sys

from lejepa_ray.data.keys import stable_hash


def test_stable_hash_is_fixed_across_processes():
    # Python salts str hashes per process; crops must not depend on which process made them.
    code = "from lejepa_ray.data.keys import stable_hash; print(stable_hash(0, 1, 'a'))"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        check=True,
    )
    assert int(other.stdout) == stable_hash(0, 1, "a")
    assert stable_hash(0, 1, "a") != stable_hash(0, 1, "b")
    assert 0 <= stable_hash("anything") < 2**63
