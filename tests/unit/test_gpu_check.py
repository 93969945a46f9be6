"""benchmarks/gpu_check.py: it must run on the GPU machine as that machine is (no Ray, no
OmegaConf), and its configs must be the recipes as ``load_config`` reads them."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import torch
from benchmarks_helpers import BENCHMARKS, _load

from lejepa_ray.config import load_config

ROOT = BENCHMARKS.parent

# Run in a fresh interpreter where importing Ray or OmegaConf fails, as on the GPU machine.
WITHOUT_RAY = """
import importlib.abc, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("ray", "omegaconf"):
            raise ImportError(f"{name} is not installed on the GPU machine")

sys.meta_path.insert(0, Absent())

import runpy
check = runpy.run_path(sys.argv_path, run_name="gpu_check")
import torch
cpu = torch.device("cpu")
for recipe in (
    "imagenet1k_vit_large.yaml",
    "imagenet1k_vit_gigantic.yaml",
    "imagenette_vit_small.yaml",
):
    check["_recipe"](recipe, check["DRY"].gigantic, cpu)
for name in ("sigreg", "scale_plan", "views"):
    __import__(name)
assert check["check_data_stream"](check["DRY"], cpu) is None  # skipped, not failed
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "omegaconf"))
assert not loaded, loaded
print("ray-free")
"""


def test_the_gpu_path_imports_without_ray_or_omegaconf():
    code = WITHOUT_RAY.replace("sys.argv_path", repr(str(BENCHMARKS / "gpu_check.py")))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0 and "ray-free" in proc.stdout, proc.stderr[-3000:]


def test_the_recipes_read_without_omegaconf_are_the_recipes():
    check = _load("gpu_check")
    for name in (
        "imagenet1k_vit_large.yaml",
        "imagenet1k_vit_gigantic.yaml",
        "imagenette_vit_small.yaml",
    ):
        ours = check._recipe(name, {}, torch.device("cuda"))
        theirs = load_config(ROOT / "jobs" / "configs" / name, ["scaling.num_workers=1"])
        for section in ("model", "loss", "optim"):
            theirs_section = getattr(theirs, section)
            if section == "optim":  # the checks time steady steps: no warm-up
                theirs_section = dataclasses.replace(theirs_section, warmup_steps=0)
            assert getattr(ours, section) == theirs_section, (name, section)
        assert ours.data.views == theirs.data.views, name
        s, t = ours.scaling, theirs.scaling
        assert (s.batch_size, s.strategy, s.precision, s.activation_checkpointing) == (
            t.batch_size,
            t.strategy,
            t.precision,
            t.activation_checkpointing,
        ), name
        assert s.use_gpu and s.num_workers == 1, name
    # A CPU dry run computes in fp32, and the toys replace the model and views.
    toy = check._recipe("imagenet1k_vit_gigantic.yaml", check.DRY.gigantic, torch.device("cpu"))
    assert toy.scaling.precision == "fp32" and not toy.scaling.use_gpu
    assert toy.model.name == "vit_tiny_patch16_224" and toy.data.views.global_size == 32
    assert toy.scaling.strategy == "fsdp" and toy.scaling.activation_checkpointing


def test_the_check_list_and_its_budget(capsys):
    check = _load("gpu_check")
    assert list(check.CHECKS)[:3] == ["environment", "sigreg", "vit_l"]
    assert set(check.GPU.timeouts) == set(check.CHECKS) == set(check.DRY.timeouts)
    # Not one check may run past the budget the docs give the GPU machine (8 minutes).
    assert max(check.GPU.timeouts.values()) < 480
    assert check._rounded({"a": [1.234567, 2], "b": 0.000123456}) == {
        "a": [1.235, 2],
        "b": 0.0001235,
    }
