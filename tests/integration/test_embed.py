"""``lejepa-ray embed`` on a real local Ray instance: parquet out, the features eval probes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from export_helpers import _trained_checkpoint

from lejepa_ray.cli import main
from lejepa_ray.data.eval_images import read_images
from lejepa_ray.data.sources import data_from_arg
from lejepa_ray.errors import ConfigError
from lejepa_ray.evaluation.export import export
from lejepa_ray.evaluation.frozen import load_frozen
from lejepa_ray.launch.embed import SUCCESS_FILE, EmbedOptions, embed

pytestmark = pytest.mark.slow


def test_embeddings_are_eval_s_features_written_once_complete(ray_cluster, tmp_path, capsys):
    checkpoint, _ = _trained_checkpoint(tmp_path, "resnet18")
    export(checkpoint, tmp_path / "export")
    out = tmp_path / "emb"
    args = ["embed", str(tmp_path / "export"), "--data", "digits:val", "--out", str(out)]
    assert main([*args, "--batch-size", "16", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "into 512-d vectors" in printed and "images/s" in printed

    table = pq.read_table(out)
    assert table.schema.field("embedding").type.list_size == 512
    assert str(table.schema.field("embedding").type.value_type) == "float"
    assert (out / SUCCESS_FILE).exists()
    assert not list(tmp_path.glob("emb.incomplete-*"))  # the staging folder was moved

    # The same numbers eval's probes see for the same images.
    model, size = load_frozen(tmp_path / "export")
    images, labels, keys = read_images(data_from_arg("digits:val", size), size, 10_000)
    with torch.no_grad():
        expected = model.features(torch.stack(images)).numpy()
    rows = {k: i for i, k in enumerate(table["key"].to_pylist())}
    assert sorted(rows) == sorted(keys) and len(rows) == len(keys)
    emb = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    order = [rows[k] for k in keys]
    np.testing.assert_allclose(emb[order], expected, rtol=1e-4, atol=1e-5)
    assert table["label"].to_pylist() == [labels[keys.index(k)] for k in table["key"].to_pylist()]

    # The nearest-neighbour lookup docs/training.md shows runs on the output as written.
    doc = (Path(__file__).parents[2] / "docs" / "training.md").read_text()
    lookup = doc.split("## Embeddings", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    exec(lookup.replace('"OUT"', repr(str(out))), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and all(line.split()[1] in rows for line in lines)

    # A second embed into the same folder is refused before any work.
    with pytest.raises(ConfigError, match="already holds files"):
        embed(EmbedOptions(str(tmp_path / "export"), "digits:val", str(out)))
