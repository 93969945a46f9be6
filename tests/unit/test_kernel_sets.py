"""lejepa_ray.data.kernel_sets: the view-kernel interface, its registries, and the module
structure behind it (no import cycle among the view modules, OpenCV in the fast kernels only,
the trainer blind to ``data.augment_on``)."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lejepa_ray.data import device_views, pil_kernels
from lejepa_ray.data.config import DataConfig, ViewConfig
from lejepa_ray.data.kernel_sets import (
    DEVICE_STEPS,
    KERNELS,
    ViewKernels,
    device_augment,
    kernels,
    photometric_in_data,
)
from lejepa_ray.data.view_params import PARAM_FIELDS, ViewParams
from lejepa_ray.data.views import ViewMaker
from lejepa_ray.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "lejepa_ray"


def test_an_unknown_kernel_set_is_a_config_error_naming_the_registered_ones():
    with pytest.raises(ConfigError, match=r"data.views.kernels='cuda' is invalid: .*fast, pil"):
        kernels("cuda")


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_each_registered_kernel_set_satisfies_the_interface_and_makes_a_view(name):
    k = kernels(name)
    assert isinstance(k, ViewKernels)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8))
    p = ViewParams((5, 4, 35, 30), None, True, None, True, True)
    for photometric in (True, False):
        out = np.zeros((3, 16, 16), np.uint8)
        k.render(k.prepare(img), p, 16, 128, out, None, photometric)
        assert out.any()
    # data.views.kernels accepts exactly the registered names.
    assert ViewConfig(kernels=name).kernels == name


def test_the_view_maker_makes_its_pixels_with_the_registered_kernel_set(monkeypatch):
    sizes = []

    class Spy:
        prepare = staticmethod(pil_kernels.prepare)

        @staticmethod
        def render(*args) -> None:
            sizes.append(args[2])
            pil_kernels.render(*args)

    monkeypatch.setitem(KERNELS, "pil", lambda: Spy)
    maker = ViewMaker(ViewConfig(global_size=16, local_views=1, local_size=8, kernels="pil"))
    maker.views_of(Image.new("RGB", (32, 32)), "k", 0)
    assert sizes == [16, 16, 8]


def test_the_device_step_is_none_on_the_cpu_and_augment_batch_on_the_device():
    cpu = DataConfig()
    assert device_augment(cpu) is None and photometric_in_data(cpu)
    on_device = replace(cpu, augment_on="device")
    assert not photometric_in_data(on_device)
    step = device_augment(on_device)
    assert step is not None
    params = torch.zeros(2, 2, len(PARAM_FIELDS))
    params[..., PARAM_FIELDS.index("flip")] = 1.0
    views = torch.arange(2 * 2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 2, 3, 8, 8)
    batch = {"global": views, "global_params": params}
    out = step(batch)
    assert torch.equal(out["global"], device_views.augment_batch(batch, on_device.views)["global"])
    assert torch.equal(out["global"], views.flip(-1).float())
    # data.augment_on accepts exactly the registered placements.
    assert set(DEVICE_STEPS) == {"cpu", "device"}


def test_an_unregistered_augment_on_is_a_config_error_naming_the_registered_ones():
    cfg = DataConfig()
    cfg.augment_on = "gpu"  # past DataConfig's own check
    expected = r"data.augment_on='gpu' is invalid: expected one of cpu, device"
    with pytest.raises(ConfigError, match=expected):
        device_augment(cfg)


def _data_imports(path: Path) -> set[str]:
    """The ``lejepa_ray.data`` modules ``path`` imports, inside functions too (module names
    relative to ``lejepa_ray.data``)."""
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {  # `if TYPE_CHECKING:` imports are for the type checker, never run
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
        for n in ast.walk(block)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "lejepa_ray.data":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "lejepa_ray.data."
        ):
            found.add(node.module.removeprefix("lejepa_ray.data.").split(".")[0])
        elif isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix("lejepa_ray.data.").split(".")[0]
                for a in node.names
                if a.name.startswith("lejepa_ray.data.")
            }
    return found


def test_no_two_data_modules_import_each_other_nor_in_a_longer_circle():
    graph = {p.stem: _data_imports(p) for p in (PACKAGE / "data").glob("*.py")}
    assert "views" not in graph["view_kernels"] and "view_kernels" not in graph["views"]
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import circle: " + " -> ".join((*path, module))
        if module in done:
            return
        for imported in graph.get(module, ()):
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_opencv_is_imported_by_the_fast_kernels_alone_and_lazily():
    importers = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(n == "cv2" or n.startswith("cv2.") for n in names):
                importers.add(path.relative_to(PACKAGE).as_posix())
    assert importers == {"data/view_kernels.py"}
    # kernel_sets loads view_kernels inside its loader only, not at import.
    tree = ast.parse((PACKAGE / "data" / "kernel_sets.py").read_text())
    top = {a.name for node in tree.body if isinstance(node, ast.ImportFrom) for a in node.names}
    assert "view_kernels" not in top


def test_the_trainer_does_not_read_augment_on():
    tree = ast.parse((PACKAGE / "train" / "trainer.py").read_text())
    reads = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "augment_on"
    ]
    assert not reads, f"train/trainer.py reads data.augment_on at lines {reads}"


def test_the_config_accepts_exactly_the_registered_names():
    """``data.config`` cannot import the registries (they import it): its lists are kept equal
    here."""
    from lejepa_ray.data.config import AUGMENT_ON, KERNEL_SETS
    from lejepa_ray.data.kernel_sets import DEVICE_STEPS, KERNELS

    assert set(KERNEL_SETS) == set(KERNELS)
    assert set(AUGMENT_ON) == set(DEVICE_STEPS)
