"""lejepa_ray.data.convert: checked conversion, summary, idempotent rerun, crash-safe resume,
to a local folder and to S3 (moto's server, see ``tests/s3.py``).

The one-process tests are in ``tests/unit/test_convert.py``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from convert_helpers import SHARD_MB, _crash_on_second_publish, rows, shard_files
from images import make_image_folder

from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.convert import convert_image_folder
from lejepa_ray.data.sources import LocalSource, SourceError


def test_convert_to_s3_resumes_after_a_crash_with_the_same_manifest(
    s3_server, tmp_path, monkeypatch
):
    """Straight into a bucket: an interrupted conversion exposes no shard it had not finished,
    and the rerun keeps the finished ones and ends with the manifest a local conversion writes.
    The source may be a bucket too."""
    from lejepa_ray.storage import Folder, upload

    make_image_folder(tmp_path / "src", per_class=10)
    local = tmp_path / "local"
    convert_image_folder(str(tmp_path / "src"), str(local), shard_size_mb=SHARD_MB)
    uri = s3_server.uri("convert", "shards")

    temps = set(Path(tempfile.gettempdir()).glob("lejepa-convert-*"))
    published = _crash_on_second_publish(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        convert_image_folder(str(tmp_path / "src"), uri, shard_size_mb=SHARD_MB)
    # The local copy of the shard that was being published is gone with the crash.
    assert set(Path(tempfile.gettempdir()).glob("lejepa-convert-*")) == temps
    out = Folder.at(uri)
    assert published == ["shard-00000.parquet"]
    assert sorted(out.files()) == ["_CONVERTING", "shard-00000.parquet"]  # nothing half-written
    with pytest.raises(SourceError, match="unfinished conversion"):
        LocalSource(DataConfig(source="parquet", path=uri))
    monkeypatch.undo()

    # Two worker processes (spawned, not forked, with a URI in play).
    resumed = convert_image_folder(str(tmp_path / "src"), uri, shard_size_mb=SHARD_MB, workers=2)
    assert resumed.shards_reused == 1 and resumed.shards_written == len(shard_files(local)) - 1
    ours = json.loads(out.read("dataset.json"))
    theirs = json.loads((local / "dataset.json").read_text())
    assert ours == theirs  # the same shards (names, rows, bytes, fingerprints) and counts
    assert sorted(out.files()) == ["dataset.json", *shard_files(local)]
    assert rows(uri) == rows(local)

    # From a bucket to a bucket: the same shards again.
    images, again = s3_server.uri("convert", "images"), s3_server.uri("convert", "again")
    upload(str(tmp_path / "src"), images)
    assert convert_image_folder(images, again, shard_size_mb=SHARD_MB).images == resumed.images
    assert rows(again) == rows(local)
