"""Helpers shared by the unit and integration tests of lejepa_ray's convert step."""

from __future__ import annotations

from lejepa_ray.data import convert
from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.sources import LocalSource

# Small shards, so the test folder makes several of them (each image is 1-4 KiB).
SHARD_MB = 8 / 1024


def shard_files(out):
    return sorted(p.name for p in out.glob("shard-*.parquet"))


def rows(out) -> set[tuple]:
    source = LocalSource(DataConfig(source="parquet", path=str(out)))
    return {(r["key"], r["label"], r["image"]) for r in (source[i] for i in range(len(source)))}


def _crash_on_second_publish(monkeypatch) -> list[str]:
    """Make the conversion raise as it publishes its second file; the names it published."""
    real_publish, published = convert._publish, []

    def crash_on_second(tmp, final):
        if len(published) == 1:
            raise KeyboardInterrupt("simulated kill")
        real_publish(tmp, final)
        published.append(final.rsplit("/", 1)[-1])

    monkeypatch.setattr(convert, "_publish", crash_on_second)
    return published
