"""The package's layering: which module may import which.

Every ``lejepa_ray`` module belongs to a group, and groups are stacked in layers. A module may
import its own group and any group on a lower layer, never a higher layer or another group of
its own layer. A group is a subpackage, or a few top-level modules; each subpackage's docstring
names what it may import, and a test below keeps those lines equal to this table.

Imports are read with ``ast``, inside functions too (a lazy import is still a dependency).
The four leaks the survey found (storage -> data.sources, checkpoint -> runtime, export ->
pretrain, rankme -> probe) are fixed; there is no list of exceptions.
Multi-process, Ray and slow tests: ``tests/integration/test_architecture.py``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "lejepa_ray"

# group: (layer, modules). A module is named relative to lejepa_ray; "data.*" is the data
# subpackage. A module is in the first group that names it: each component's config sits
# beside its code (``model.config``) but in the "configs" group, below every component, so that
# ``config`` can compose them all and still sit below the training code that reads the whole.
# ``data.config`` stays in "data": it checks ``data.source`` against the data package's sources.
GROUPS: dict[str, tuple[int, tuple[str, ...]]] = {
    "base": (0, ("compat", "storage", "errors")),
    "configs": (1, ("objective.config", "model.config", "train.config", "evaluation.config")),
    "objective": (2, ("objective.*",)),
    "data": (2, ("data.*",)),
    "config": (3, ("config",)),
    "model": (4, ("model.*",)),
    "train": (5, ("train.*",)),
    "runs": (6, ("runs",)),
    "evaluation": (7, ("evaluation.*",)),
    "launch": (8, ("launch.*",)),
    "tune": (9, ("tune.*",)),
    "api": (10, ("__init__", "api")),
    "top": (11, ("cli.*", "cluster")),
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
        f"lejepa_ray.{module} belongs to no group in tests/unit/test_architecture.py: "
        "add it to GROUPS"
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
        ("train.trainer", "config", True),  # down
        ("config", "train.trainer", False),  # up
        ("objective.sigreg", "data.views", False),  # sideways: objective and data share a layer
        ("data.stream", "data.views", True),  # inside a group
        ("config", "model.config", True),  # a component's config is below the composition
        ("model.config", "model.encoder", False),  # and below its own component
        ("model.encoder", "model.config", True),
    ],
)
def test_the_rule_itself(importer, imported, allowed):
    mine, theirs = _group(importer), _group(imported)
    ok = mine == theirs or GROUPS[theirs][0] < GROUPS[mine][0]
    assert ok is allowed


def test_the_scan_finds_upward_sideways_and_lazy_imports(tmp_path):
    """The scanner itself, on a small package with one import of each kind."""
    pkg = tmp_path / "lejepa_ray"
    for sub in ("data", "objective", "train", "model"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    for name in ("__init__.py", "data/views.py", "train/trainer.py", "objective/loss.py"):
        (pkg / name).write_text("")
    (pkg / "config.py").write_text("from lejepa_ray.train.trainer import Trainer\n")  # up
    (pkg / "objective/sigreg.py").write_text(  # sideways, lazily, and a module named by `from`
        "import torch\n\n\ndef f():\n    from lejepa_ray.data import views\n"
    )
    (pkg / "model/encoder.py").write_text(  # down: fine
        "from lejepa_ray import config\nfrom lejepa_ray.objective import loss\n"
    )
    found = _violations(pkg)
    assert found == {
        ("config", "train.trainer"): ["lejepa_ray/config.py:1"],
        ("objective.sigreg", "data.views"): ["lejepa_ray/objective/sigreg.py:5"],
    }


@pytest.mark.parametrize(
    "package", sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")), ids=str
)
def test_each_subpackage_says_what_it_may_import(package):
    """The ``May import:`` line of a subpackage's docstring names exactly the groups below it,
    so that the docs a reader meets first and the rule the test enforces cannot drift. A list
    too long for one line goes on in the lines below it, up to a blank line (the top layer's)."""
    doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text())) or ""
    lines = [" ".join(p.split()) for p in doc.split("\n\n") if p.startswith("May import:")]
    assert lines, f"lejepa_ray/{package}/__init__.py: its docstring needs a 'May import:' line"
    said = {g.strip() for g in lines[0].removeprefix("May import:").rstrip(".").split(",")}
    mine = GROUPS[_group(package)][0]
    below = {g for g, (layer, _) in GROUPS.items() if layer < mine}
    assert said == below, (
        f"lejepa_ray/{package}/__init__.py says it may import {sorted(said)}; "
        f"tests/unit/test_architecture.py allows {sorted(below)}"
    )


def _undocumented_lazy_imports(package: Path) -> list[str]:
    """``file:line`` of each import inside a function under ``package`` whose comment block
    directly above it does not start with ``# lazy:``."""
    found = []
    for path in sorted(package.rglob("*.py")):
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        in_function = {
            node
            for fn in ast.walk(tree)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(fn)
            if isinstance(node, (ast.Import, ast.ImportFrom))
        }
        for node in sorted(in_function, key=lambda n: n.lineno):
            first = node.lineno  # climb to the first line of the comment block above it
            while first > 1 and lines[first - 2].lstrip().startswith("#"):
                first -= 1
            if first == node.lineno or not lines[first - 1].lstrip().startswith("# lazy:"):
                found.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    return found


def test_each_import_inside_a_function_says_why_it_is_lazy():
    """Imports go at module top unless a ``# lazy: <reason>`` comment directly above an import
    inside a function says why not (a heavy optional dependency, keeping Ray off the Ray-free
    core, a fast ``--help``, an import cycle...). Each import statement carries its own."""
    found = _undocumented_lazy_imports(PACKAGE)
    assert not found, (
        "imports inside functions without a '# lazy: <reason>' comment directly above: "
        "move them to the top of their module, or say why they wait:\n" + "\n".join(found)
    )
