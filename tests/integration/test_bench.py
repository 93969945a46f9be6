"""lejepa_ray.data.bench: both pipelines run and the report ends with the JSON line; a
dataset too small to measure is refused with what it needs.

The one-process tests are in ``tests/unit/test_bench.py``."""

from __future__ import annotations

import json

import pytest

from lejepa_ray.data import bench
from lejepa_ray.data.config import DataConfig, ViewConfig


@pytest.mark.slow
def test_bench_reports_both_rates_and_their_ratio(ray_cluster):
    cfg = DataConfig(
        source="synthetic",
        num_samples=2048,
        image_size=48,
        task_units=1,  # short tasks: many start inside the measured windows
        transform_batch_size=16,
        views=ViewConfig(global_size=32, local_views=2, local_size=16),
    )
    printed: list[str] = []
    result = bench.run(cfg, seconds=2, workers=1, batch_size=8, print_fn=printed.append)
    last = json.loads(printed[-1])
    assert last == result
    assert last["ray_data_samples_per_s"] > 0 and last["dataloader_samples_per_s"] > 0
    assert last["ratio"] == pytest.approx(
        last["ray_data_samples_per_s"] / last["dataloader_samples_per_s"], rel=1e-2
    )
    assert last["limited_by"] in ("read", "decode", "crops")
    assert "ratio Ray Data / DataLoader" in "\n".join(printed)
    # The stage account: Ray Data's own task times, and the slots from the task timeline.
    task, slots = last["ray_data_stages"]["views_task"], last["ray_data_stages"]["slots"]
    assert task["tasks"] >= 1 and task["wall_ms"] > 0 and task["cpu_ms"] > 0
    assert task["udf_ms"] <= task["wall_ms"] * 1.01
    assert 0 < slots["window_s"] <= last["seconds"] + 1  # the measured windows
    assert sum(slots["occupancy_s"].values()) == pytest.approx(slots["window_s"], abs=0.01)
    assert sum(s for k, s in slots["occupancy_s"].items() if k != "0") > 0, slots
    assert slots["tasks"] >= 1 and slots["task_ms"] > 0, slots
    assert last["tasks_per_cpu"] == 1
    assert "views tasks executing at once" in "\n".join(printed)
