"""The package's layering: which module may import which.

Every ``lejepa_ray`` module belongs to a group, and groups are stacked in layers. A module may
import its own group and any group on a lower layer, never a higher layer or another group of
its own layer. The groups are the subpackages issue 18 moves the flat modules into
(``docs/dev/issue18-survey.md``); until a module has moved, its group is named here.

Imports are read with ``ast``, inside functions too (a lazy import is still a dependency).
The four leaks the survey found (storage -> data.sources, checkpoint -> runtime, export ->
pretrain, rankme -> probe) are fixed; there is no list of exceptions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "platform" / "lejepa_ray"

# group: (layer, modules). A module is named relative to lejepa_ray; "data.*" is the data
# subpackage.
GROUPS: dict[str, tuple[int, tuple[str, ...]]] = {
    "base": (0, ("__init__", "compat", "storage")),
    "objective": (1, ("sigreg", "loss")),
    "data": (1, ("data.*",)),
    "config": (2, ("config",)),
    "model": (3, ("model", "parallelize", "flops")),
    "train": (4, ("train", "optim", "metrics", "checkpoint", "manifest", "rankme")),
    "evaluate": (6, ("probe", "evaluate", "export")),
    "launch": (7, ("pretrain", "runtime", "reaper")),
    "tune": (8, ("sweep", "space")),
    "top": (9, ("cli", "cluster", "chaos")),
}


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def _group(module: str) -> str:
    for name, (_, members) in GROUPS.items():
        for m in members:
            package = m.removesuffix(".*")
            inside = module == package or module.startswith(package + ".")
            if module == m or (m.endswith(".*") and inside):
                return name
    raise AssertionError(
        f"lejepa_ray.{module} belongs to no group in tests/test_architecture.py: add it to GROUPS"
    )


def _is_module(target: str, root: Path) -> bool:
    where = root / target.replace(".", "/")
    return where.with_suffix(".py").exists() or (where / "__init__.py").exists()


def _imports(path: Path, root: Path = PACKAGE) -> list[tuple[str, int]]:
    """The lejepa_ray modules ``path`` imports, anywhere in it, as (module relative to
    lejepa_ray, line). ``from lejepa_ray.a import b`` counts ``a.b`` when that is a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports (lejepa_ray....)"
            base = (node.module or "").removeprefix("lejepa_ray").removeprefix(".")
            if not (node.module or "").startswith("lejepa_ray"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                target = sub if _is_module(sub, root) else base
                if target:
                    found.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lejepa_ray."):
                    found.append((alias.name.removeprefix("lejepa_ray."), node.lineno))
    return found


def _violations(root: Path = PACKAGE) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        importer = _module_name(path, root)
        if not importer:  # the package's own __init__
            continue
        mine = _group(importer)
        for imported, line in _imports(path, root):
            theirs = _group(imported)
            if theirs == mine or GROUPS[theirs][0] < GROUPS[mine][0]:
                continue
            out.setdefault((importer, imported), []).append(
                f"{path.relative_to(root.parent)}:{line}"
            )
    return out


def test_every_module_belongs_to_a_group():
    for path in PACKAGE.rglob("*.py"):
        if _module_name(path):
            _group(_module_name(path))


def test_no_module_imports_upward_or_sideways():
    new = _violations()
    assert not new, "imports against the layering (importer -> imported, where):\n" + "\n".join(
        f"  {a} -> {b}: {', '.join(where)} (layer {GROUPS[_group(a)][0]} may not import "
        f"layer {GROUPS[_group(b)][0]}{' of another group' if _group(a) != _group(b) else ''})"
        for (a, b), where in sorted(new.items())
    )


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("train", "config", True),  # down
        ("config", "train", False),  # up
        ("sigreg", "data.views", False),  # sideways: objective and data share a layer
        ("data.stream", "data.views", True),  # inside a group
    ],
)
def test_the_rule_itself(importer, imported, allowed):
    mine, theirs = _group(importer), _group(imported)
    ok = mine == theirs or GROUPS[theirs][0] < GROUPS[mine][0]
    assert ok is allowed


def test_the_scan_finds_upward_sideways_and_lazy_imports(tmp_path):
    """The scanner itself, on a small package with one import of each kind."""
    pkg = tmp_path / "lejepa_ray"
    (pkg / "data").mkdir(parents=True)
    for name in ("__init__.py", "data/__init__.py", "data/views.py", "train.py", "loss.py"):
        (pkg / name).write_text("")
    (pkg / "config.py").write_text("from lejepa_ray.train import Trainer\n")  # up
    (pkg / "sigreg.py").write_text(  # sideways, lazily, and a module named by `from`
        "import torch\n\n\ndef f():\n    from lejepa_ray.data import views\n"
    )
    (pkg / "model.py").write_text("from lejepa_ray import loss, config\n")  # down: fine
    found = _violations(pkg)
    assert found == {
        ("config", "train"): ["lejepa_ray/config.py:1"],
        ("sigreg", "data.views"): ["lejepa_ray/sigreg.py:5"],
    }
