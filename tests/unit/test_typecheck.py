"""The type check's configuration ([tool.mypy] in pyproject.toml) still names real code.

``make typecheck`` (part of ``make test``) runs mypy itself; these tests only keep its
configuration honest after a package moves: a ``files`` entry must be a package with code, and
the stricter per-package flags must name a package that is checked, since mypy says nothing
about an override that matches no module.
"""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

ROOT = Path(__file__).resolve().parents[2]


def _mypy_config() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["mypy"]


def _checked_packages() -> dict[str, Path]:
    """Dotted module name -> directory, for every ``files`` entry."""
    config = _mypy_config()
    source_root = ROOT / config["mypy_path"]
    packages = {}
    for entry in config["files"]:
        path = ROOT / entry
        name = ".".join(path.relative_to(source_root).parts)
        packages[name] = path
    return packages


def test_every_checked_directory_is_a_package_with_code():
    packages = _checked_packages()
    assert packages, "[tool.mypy] files is empty: make typecheck would check nothing"
    for name, path in packages.items():
        if path.suffix == ".py":  # a top-level module (api.py)
            assert path.is_file(), f"{name}: {path} does not exist"
            continue
        assert (path / "__init__.py").is_file(), f"{name}: {path} is not a package"
        modules = [p for p in path.rglob("*.py") if p.name != "__init__.py"]
        assert modules, f"{name}: {path} holds no modules"


def test_stricter_flags_name_checked_packages():
    checked = _checked_packages()
    for override in _mypy_config().get("overrides", []):
        patterns = override["module"]
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            if not pattern.startswith("lejepa_ray"):
                continue  # third-party settings
            name = pattern.removesuffix(".*")
            assert any(name == c or name.startswith(c + ".") for c in checked), (
                f"[[tool.mypy.overrides]] module {pattern!r} is not under the type check: "
                f"add its directory to [tool.mypy] files or drop it (checked: {sorted(checked)})"
            )


def test_every_module_of_the_package_is_under_the_type_check():
    """Issue 38: mypy over every subpackage and top-level module, none left out."""
    checked = list(_checked_packages().values())
    package = ROOT / _mypy_config()["mypy_path"] / "lejepa_ray"
    left_out = [
        str(module.relative_to(package))
        for module in package.rglob("*.py")
        if not any(module == c or c in module.parents for c in checked)
    ]
    assert not left_out, f"modules outside [tool.mypy] files: {left_out}"
