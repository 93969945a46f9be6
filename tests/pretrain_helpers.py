"""Helpers shared by the pretraining tests (unit and integration) and the storage tests."""

from __future__ import annotations

from pathlib import Path

from lejepa_ray.config import QUICKSTART, PretrainConfig, load_config


def _quickstart(tmp_path: Path, name: str, *overrides: str) -> PretrainConfig:
    """The CPU quickstart with a ResNet-18, stored under ``tmp_path/name``. The engine tests
    keep ResNet-18: its random init probes near chance (0.16), so 40 steps of learning show
    plainly, where the quickstart's resnet10t starts at 0.86."""
    return load_config(
        QUICKSTART, [f"name={name}", f"storage_path={tmp_path}", "model.name=resnet18", *overrides]
    )


def _scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(f"{run_dir}/tensorboard")
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }
