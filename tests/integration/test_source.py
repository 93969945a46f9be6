"""A source defined in this file alone (``toy_discs``), registered in the driver only, then
pretrained on and probed through the public Python API on a real local Ray instance.

Ray's processes import ``lejepa_ray`` afresh and cannot import this file: the source reaches
them pickled by value (``ray.cloudpickle.register_pickle_by_value``, as a user's module not
installed on the workers would), inside the readers of the views tasks and inside the config
of the training workers (RankMe) and of the probe task (lejepa_ray.data.source).
"""

from __future__ import annotations

import io
import sys

import pytest
import ray
from PIL import Image, ImageDraw

import lejepa_ray
from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.keys import in_split
from lejepa_ray.data.source import SOURCES, IndexedSource, Row, register_source

pytestmark = pytest.mark.slow

COLOURS = [(220, 30, 30), (30, 160, 30), (30, 30, 220), (200, 160, 0)]


class ToyDiscs(IndexedSource):
    """A disc of one of four colours (its label) on grey, placed by the sample's number:
    ``data.num_samples`` (default 200) made, then split, at ``data.image_size`` px."""

    generated = True
    num_samples_before_split = True

    def ids(self, cfg: DataConfig) -> list[int]:
        made = range(cfg.num_samples or 200)
        return [n for n in made if in_split(f"toy_discs/{n}", cfg.split)]

    def size(self, cfg: DataConfig) -> int:
        return len(self.ids(cfg))

    def row(self, cfg: DataConfig, i: int) -> Row:
        n, s = self.ids(cfg)[i], cfg.image_size
        image = Image.new("RGB", (s, s), (128, 128, 128))
        x, y, r = (7 * n) % (s // 2), (3 * n) % (s // 2), s // 4
        ImageDraw.Draw(image).ellipse((x, y, x + 2 * r, y + 2 * r), fill=COLOURS[n % 4])
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return {"image": buffer.getvalue(), "label": n % 4, "key": f"toy_discs/{n}"}

    def class_names(self, cfg: DataConfig) -> list[str]:
        return ["red", "green", "blue", "yellow"]


@pytest.fixture
def toy_discs():
    """``toy_discs`` registered (as ``@register_source("toy_discs")`` on the class would at
    import; here for this test alone, so that other tests' messages list the built-ins only),
    and this module's classes and functions pickled by value by Ray while the test runs."""
    register_source("toy_discs")(ToyDiscs)
    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)
    yield
    ray.cloudpickle.unregister_pickle_by_value(module)
    SOURCES.pop("toy_discs")


def test_a_source_registered_in_the_driver_pretrains_and_probes(ray_cluster, toy_discs, tmp_path):
    result = lejepa_ray.pretrain(
        data="toy_discs:train",
        out=str(tmp_path / "toy"),
        overrides=[
            "optim.steps=4",
            "optim.warmup_steps=1",
            "checkpoint.every_steps=4",
            "logging.every_steps=2",
            "loss.score_smoothing_steps=2",
            "data.num_samples=240",
            "scaling.batch_size=16",
            "probe.max_samples=200",
            "probe.every_steps=4",  # a Ray task of its own probes the checkpoint
            "logging.rankme_samples=32",  # measured in the training workers, on toy_discs:val
        ],
    )
    assert result.metrics["step"] == 4 and result.checkpoint is not None
    assert result.metrics["rankme/backbone"] > 0
    during = result.probes_during[4]
    assert "probe/failed" not in during and 0 <= during["probe/knn_top1"] <= 1, during
    assert result.probe is not None and 0 <= result.probe.trained.knn_top1 <= 1

    report = lejepa_ray.evaluate(
        source=result.checkpoint,
        data="toy_discs:train",
        val_data="toy_discs:val",
        probe="knn",
        max_samples=200,
    )
    assert report.classes == 4 and report.protocol == "train/val"
    assert report.knn_top1 is not None and 0 <= report.knn_top1 <= 1
    assert report.bank + report.queries == 200  # the toy's 80/20 split of its default 200
