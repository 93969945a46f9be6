"""The package's layering: which module may import which.

Every ``lejepa_ray`` module belongs to a group, and groups are stacked in layers. A module may
import its own group and any group on a lower layer, never a higher layer or another group of
its own layer. A group is a subpackage, or a few top-level modules; each subpackage's docstring
names what it may import, and a test below keeps those lines equal to this table.

Imports are read with ``ast``, inside functions too (a lazy import is still a dependency).
The four leaks the survey found (storage -> data.sources, checkpoint -> runtime, export ->
pretrain, rankme -> probe) are fixed; there is no list of exceptions.
The one-process tests are in ``tests/unit/test_architecture.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "lejepa_ray"

# The Ray-free core: what the GPU check (issue 20) imports on a machine with torch, timm and
# pyarrow but no Ray, OmegaConf, TensorBoard or OpenCV.
CORE = (
    "lejepa_ray.objective.sigreg",
    "lejepa_ray.objective.loss",
    "lejepa_ray.config",
    "lejepa_ray.model.encoder",
    "lejepa_ray.model.parallelize",
    "lejepa_ray.model.flops",
    "lejepa_ray.train.trainer",
    "lejepa_ray.train.optim",
    "lejepa_ray.train.checkpoint",
    "lejepa_ray.train.checkpoint_read",
    "lejepa_ray.train.checkpoint_shards",
    "lejepa_ray.train.rng",
    "lejepa_ray.train.rankme",
    "lejepa_ray.train.memory",
    "lejepa_ray.train.faults",
)


def test_the_core_imports_without_ray_omegaconf_tensorboard_or_opencv():
    """Each core module imports in a fresh interpreter where those packages cannot be
    imported (``sys.modules[name] = None`` makes ``import name`` fail), and a config still
    builds from its defaults there."""
    code = (
        "import sys\n"
        "for name in ('ray', 'omegaconf', 'tensorboard', 'cv2', 'yaml'):\n"
        "    sys.modules[name] = None\n"
        f"for module in {CORE!r}:\n"
        "    __import__(module)\n"
        "from lejepa_ray.config import PretrainConfig\n"
        "PretrainConfig()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
