"""lejepa_ray.data.bench: both pipelines run and the report ends with the JSON line; a
dataset too small to measure is refused with what it needs."""

from __future__ import annotations

import json

import pytest

from lejepa_ray.data import bench
from lejepa_ray.data.config import DataConfig, ViewConfig


@pytest.mark.slow
def test_bench_reports_both_rates_and_their_ratio(ray_cluster):
    cfg = DataConfig(
        source="synthetic",
        num_samples=400,
        image_size=48,
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


def test_a_dataset_too_small_is_refused_with_what_it_needs(tmp_path, capsys):
    from images import make_image_folder

    from lejepa_ray.cli import main
    from lejepa_ray.data.convert import convert_image_folder

    make_image_folder(tmp_path / "src", per_class=16, bad=False)  # 32 images
    convert_image_folder(str(tmp_path / "src"), str(tmp_path / "shards"))
    assert main(["data", "bench", "--data", str(tmp_path / "shards"), "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert "needs at least 96 samples at --batch-size 32" in err and "has 32" in err, err
    assert "--batch-size 10 or less" in err
    with pytest.raises(bench.BenchError, match="needs at least 24 samples"):
        bench.run(DataConfig(source="synthetic", num_samples=20), batch_size=8)
