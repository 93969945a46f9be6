"""lejepa_ray.data.bench: both pipelines run and the report ends with the JSON line; a
dataset too small to measure is refused with what it needs.

Multi-process, Ray and slow tests: ``tests/integration/test_bench.py``."""

from __future__ import annotations

import pytest

from lejepa_ray.data import bench
from lejepa_ray.data.config import DataConfig


def test_a_dataset_too_small_is_refused_with_what_it_needs(tmp_path, capsys):
    from images import make_image_folder

    from lejepa_ray.cli import main
    from lejepa_ray.data.convert import convert_image_folder

    make_image_folder(tmp_path / "src", per_class=16, bad=False)  # 32 images
    convert_image_folder(str(tmp_path / "src"), str(tmp_path / "shards"))
    assert main(["data", "bench", "--data", str(tmp_path / "shards"), "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert "needs at least 96 samples at --batch_size=32" in err and "has 32" in err, err
    assert "--batch_size=10 or less" in err
    with pytest.raises(bench.BenchError, match="needs at least 24 samples"):
        bench.run(DataConfig(source="synthetic", num_samples=20), batch_size=8)


def test_ray_data_overhead_is_its_cpu_beyond_the_dataloader_s_idle_cores_apart():
    from lejepa_ray.data.bench import ray_data_overhead

    loader = {"workers": 5.0, "consumer": 0.1, "ray": 0.0, "idle": 0.2}
    stream = {"workers": 5.3, "consumer": 0.3, "ray": 0.1, "idle": 3.0}
    assert ray_data_overhead(loader, stream) == pytest.approx(0.6)
