"""Helpers shared by the unit and integration tests of the sweeps."""

from __future__ import annotations

from pathlib import Path


def _space(tmp_path: Path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)
