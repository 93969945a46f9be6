"""Package data: the configs the command line reads at run time ship inside the wheel and are
found through the installed package, not through a repository checkout.

The one-process tests are in ``tests/unit/test_packaging.py``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lejepa_ray.config import default_config, load_config

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "platform" / "lejepa_ray"


def _data_files(package: Path) -> set[str]:
    """Every file of the source package that is not Python, as a path inside the wheel."""
    return {
        f"lejepa_ray/{p.relative_to(package).as_posix()}"
        for p in package.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }


@pytest.mark.slow
def test_the_wheel_ships_the_default_config_and_the_installed_package_finds_it(tmp_path):
    # The build inputs are copied out first: an in-tree build writes build/ and an egg-info
    # into the checkout, and a stale build/lib would leak removed files into later wheels.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "platform",
        src / "platform",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    # No build isolation and no index: the environment's setuptools (>= 70.1 builds wheels
    # without the `wheel` package; the dev extra asks for it) and no network.
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, "."],
        cwd=src,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("lejepa_ray-*.whl")

    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        assert "lejepa_ray/configs/quickstart.yaml" in names
        # Every non-Python file of the package ships (a data file added without a matching
        # package-data glob fails here), byte for byte.
        data = _data_files(PACKAGE)
        assert data <= names, sorted(data - names)
        for name in data:
            assert whl.read(name) == (PACKAGE.parent / name).read_bytes(), name

    site = tmp_path / "site"
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", site, wheel],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    # A fresh interpreter that sees the installed copy first and no checkout: PYTHONPATH holds
    # only the target (it precedes the editable install's .pth entry in site-packages), and
    # the working directory is an empty folder.
    snippet = (
        "import json, lejepa_ray\n"
        "from lejepa_ray.config import default_config\n"
        "from lejepa_ray.config import load_config\n"
        "path = default_config()\n"
        "cfg = load_config(path)\n"
        "print(json.dumps({'package': lejepa_ray.__file__, 'config': str(path),\n"
        "                  'model': cfg.model.name, 'steps': cfg.optim.steps}))\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run(
        [sys.executable, "-c", snippet], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).resolve().is_relative_to(site.resolve()), found
    assert (
        Path(found["config"]).resolve()
        == (site / "lejepa_ray" / "configs" / "quickstart.yaml").resolve()
    ), found
    expected = load_config(default_config())
    assert (found["model"], found["steps"]) == (expected.model.name, expected.optim.steps)
