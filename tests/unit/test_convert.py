"""lejepa_ray.data.convert: checked conversion, summary, idempotent rerun, crash-safe resume,
to a local folder and to S3 (moto's server, see ``tests/s3.py``).

Multi-process, Ray and slow tests: ``tests/integration/test_convert.py``."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from convert_helpers import SHARD_MB, _crash_on_second_publish, rows, shard_files
from images import make_image_folder

from lejepa_ray.cli import main
from lejepa_ray.data import convert
from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.convert import convert_image_folder
from lejepa_ray.data.sources import LocalSource, SourceError, class_names


def test_convert_writes_good_images_and_counts_bad_ones(tmp_path):
    expected = make_image_folder(tmp_path / "src", per_class=6)
    summary = convert_image_folder(
        str(tmp_path / "src"), str(tmp_path / "out"), shard_size_mb=SHARD_MB
    )
    assert summary.images == expected["good"] == 12
    assert dict(summary.skipped) == expected["bad"]
    assert {e["path"] for e in summary.skipped_files} == {
        "dog/empty.jpg",
        "dog/readme.png",
        "cat/cut.JPG",
        "cat/bomb.png",
    }
    assert summary.shards_written == len(shard_files(tmp_path / "out")) >= 2

    manifest = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert manifest["classes"] == ["cat", "dog"] and manifest["images"] == 12
    assert manifest["skipped"] == expected["bad"]
    # Class names travel with the data, in the manifest and in every shard's schema.
    assert class_names(DataConfig(source="parquet", path=str(tmp_path / "out"))) == ["cat", "dog"]
    table = pq.read_table(tmp_path / "out" / shard_files(tmp_path / "out")[0])
    assert json.loads(table.schema.metadata[b"lejepa_ray.classes"]) == ["cat", "dog"]
    assert set(table.column_names) == {"image", "label", "path", "width", "height"}

    # The original bytes are stored, labels follow the subfolders.
    got = rows(tmp_path / "out")
    src = tmp_path / "src"
    assert ("cat/001.png", 0, (src / "cat/001.png").read_bytes()) in got
    assert ("dog/005.webp", 1, (src / "dog/005.webp").read_bytes()) in got


def test_shards_mix_the_classes(tmp_path):
    make_image_folder(tmp_path / "src", per_class=20, bad=False)
    convert_image_folder(str(tmp_path / "src"), str(tmp_path / "out"), shard_size_mb=0.06)
    labels = [
        set(pq.read_table(p).column("label").to_pylist())
        for p in sorted((tmp_path / "out").glob("shard-*.parquet"))
    ]
    assert len(labels) >= 2 and all(s == {0, 1} for s in labels)


def test_rerun_is_idempotent(tmp_path):
    make_image_folder(tmp_path / "src")
    args = (str(tmp_path / "src"), str(tmp_path / "out"))
    first = convert_image_folder(*args, shard_size_mb=SHARD_MB)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("shard-*")}
    before = rows(tmp_path / "out")
    again = convert_image_folder(*args, shard_size_mb=SHARD_MB)
    assert again.shards_written == 0 and again.shards_reused == first.shards_written
    assert again.images == first.images and again.skipped == first.skipped
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("shard-*")} == stamps
    assert rows(tmp_path / "out") == before


def test_interrupted_conversion_resumes_and_never_exposes_a_partial_shard(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "src", per_class=10)
    clean = tmp_path / "clean"
    convert_image_folder(str(tmp_path / "src"), str(clean), shard_size_mb=SHARD_MB)
    total_shards = len(shard_files(clean))
    assert total_shards >= 3

    # Crash the run as it publishes its second shard: that shard is fully written, not renamed.
    published = _crash_on_second_publish(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert_image_folder(str(tmp_path / "src"), str(out), shard_size_mb=SHARD_MB)
    assert shard_files(out) == published == ["shard-00000.parquet"]
    assert [p.name for p in out.glob(".shard-00001.parquet.*.tmp")]  # the partial stays hidden
    assert not (out / "dataset.json").exists()  # nothing announces an unfinished dataset
    with pytest.raises(SourceError):  # and a reader refuses it rather than reading half
        LocalSource(DataConfig(source="parquet", path=str(out / "dataset.json")))
    first_stamp = (out / "shard-00000.parquet").stat().st_mtime_ns

    monkeypatch.undo()
    resumed = convert_image_folder(str(tmp_path / "src"), str(out), shard_size_mb=SHARD_MB)
    assert resumed.shards_reused == 1 and resumed.shards_written == total_shards - 1
    assert (out / "shard-00000.parquet").stat().st_mtime_ns == first_stamp
    assert not list(out.glob(".*.tmp"))
    assert shard_files(out) == shard_files(clean)
    assert rows(out) == rows(clean)


def test_changed_source_is_reconverted(tmp_path):
    make_image_folder(tmp_path / "src", per_class=10, bad=False)
    args = (str(tmp_path / "src"), str(tmp_path / "out"))
    convert_image_folder(*args, shard_size_mb=SHARD_MB)
    (tmp_path / "src" / "cat" / "003.jpg").write_bytes(b"")  # one image goes bad
    again = convert_image_folder(*args, shard_size_mb=SHARD_MB)
    # The shard holding the changed file no longer matches its fingerprint: it is rewritten
    # (with the boundaries after it, which follow the file sizes).
    assert again.shards_written >= 1
    assert again.images == 19 and dict(again.skipped) == {"empty": 1}


def test_cli_convert_prints_the_summary(tmp_path, capsys):
    make_image_folder(tmp_path / "src", per_class=4)
    assert (
        main(
            [
                "data",
                "convert",
                str(tmp_path / "src"),
                str(tmp_path / "out"),
                "--shard-size-mb",
                "0.01",
                "--workers",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Wrote 8 images" in out
    for reason in ("empty", "not_an_image", "truncated", "too_large"):
        assert reason in out
    assert main(["data", "convert", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_reconversion_crash_leaves_a_folder_readers_refuse(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "src", per_class=10)
    out = tmp_path / "out"
    convert_image_folder(str(tmp_path / "src"), str(out), shard_size_mb=SHARD_MB)
    for p in list((tmp_path / "src" / "dog").glob("00[0-4].*")):
        p.unlink()  # the source changes: the next conversion rewrites shards in place

    def crash(tmp, final):
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(convert, "_publish", crash)
    with pytest.raises(KeyboardInterrupt):
        convert_image_folder(str(tmp_path / "src"), str(out), shard_size_mb=SHARD_MB)
    # Old manifest gone, folder marked: neither the old nor a mixed dataset can be read.
    with pytest.raises(SourceError, match="unfinished conversion"):
        LocalSource(DataConfig(source="parquet", path=str(out)))
    monkeypatch.undo()
    again = convert_image_folder(str(tmp_path / "src"), str(out), shard_size_mb=SHARD_MB)
    assert again.images == 15 and len(LocalSource(DataConfig(source="parquet", path=str(out))))
    assert not (out / "_CONVERTING").exists()
