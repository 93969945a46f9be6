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


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(rel.parts)


def _group(module: str) -> str:
    for name, (_, members) in GROUPS.items():
        for m in members:
            package = m.removesuffix(".*")
            if module == m or (
                m.endswith(".*") and (module == package or module.startswith(package + "."))
            ):
                return name
    raise AssertionError(
        f"lejepa_ray.{module} belongs to no group in tests/test_architecture.py: add it to GROUPS"
    )


def _imports(path: Path) -> list[tuple[str, int]]:
    """The lejepa_ray modules ``path`` imports, as (module relative to lejepa_ray, line)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "lejepa_ray" or node.module == "lejepa_ray.data":
                # `from lejepa_ray.data import views` imports a module, not a name.
                names = [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("lejepa_ray."):
                target = name.removeprefix("lejepa_ray.")
                if (PACKAGE / target.replace(".", "/")).with_suffix(".py").exists() or (
                    PACKAGE / target.replace(".", "/") / "__init__.py"
                ).exists():
                    found.append((target, node.lineno))
    return found


def _violations() -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        if importer.endswith(".__init__"):
            importer = importer.removesuffix(".__init__")
        mine = _group(importer)
        for imported, line in _imports(path):
            theirs = _group(imported)
            if theirs == mine or GROUPS[theirs][0] < GROUPS[mine][0]:
                continue
            out.setdefault((importer, imported), []).append(
                f"{path.relative_to(PACKAGE.parent)}:{line}"
            )
    return out


def test_every_module_belongs_to_a_group():
    for path in PACKAGE.rglob("*.py"):
        _group(_module_name(path).removesuffix(".__init__"))


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
