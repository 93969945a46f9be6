"""lejepa_ray.data.sources and .synthetic: listing, labels, errors, generated sources."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from images import make_image_folder, photo

from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.decode import decode_rgb
from lejepa_ray.data.keys import in_split
from lejepa_ray.data.sources import (
    LocalSource,
    SourceError,
    class_names,
    data_from_arg,
    list_image_folder,
    source_from_arg,
)
from lejepa_ray.data.synthetic import synthetic_image


def test_folder_labels_come_from_first_level_subfolders(tmp_path):
    make_image_folder(tmp_path, per_class=3, bad=False)
    (tmp_path / "dog" / "deeper").mkdir()
    (tmp_path / "dog" / "deeper" / "x.jpeg").write_bytes(photo())
    listing = list_image_folder(str(tmp_path))
    assert listing.classes == ["cat", "dog"]
    assert len(listing.files) == 7  # notes.txt and .hidden.jpg are not images
    by_name = {
        f.split("/", len(str(tmp_path).split("/")))[-1]: y
        for f, y in zip(listing.files, listing.labels, strict=True)
    }
    assert by_name["cat/000.jpg"] == 0 and by_name["dog/deeper/x.jpeg"] == 1


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(photo(fmt="PNG"))
    listing = list_image_folder(str(tmp_path))
    assert listing.classes == [] and listing.labels == [-1, -1, -1]
    assert class_names(DataConfig(source="folder", path=str(tmp_path))) is None


def test_missing_path_says_so(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        list_image_folder(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="does not exist"):
        LocalSource(DataConfig(source="parquet", path=str(tmp_path / "nope")))


def test_folder_without_images_says_so(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(SourceError, match=r"holds no images: expected files ending in \.jpg"):
        list_image_folder(str(tmp_path))
    with pytest.raises(SourceError, match="holds no parquet files"):
        LocalSource(DataConfig(source="parquet", path=str(tmp_path)))


def test_parquet_without_image_column_says_so(tmp_path):
    pq.write_table(pa.table({"pixels": [b"x"]}), tmp_path / "a.parquet")
    with pytest.raises(SourceError, match="has no 'image' column"):
        LocalSource(DataConfig(source="parquet", path=str(tmp_path)))


def test_plain_parquet_rows_get_labels_and_content_keys(tmp_path):
    images = [photo(seed=i) for i in range(3)]
    pq.write_table(pa.table({"image": images, "label": [2, None, 0]}), tmp_path / "a.parquet")
    source = LocalSource(DataConfig(source="parquet", path=str(tmp_path / "a.parquet")))
    rows = [source[i] for i in range(len(source))]
    assert [r["label"] for r in rows] == [2, -1, 0]
    assert rows[0]["image"] == images[0]
    assert len({r["key"] for r in rows}) == 3 and rows[0]["key"].startswith("sha:")


def test_source_from_arg(tmp_path):
    assert source_from_arg("digits") == ("digits", None)
    make_image_folder(tmp_path / "imgs", per_class=1, bad=False)
    assert source_from_arg(str(tmp_path / "imgs")) == ("folder", str(tmp_path / "imgs"))
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"image": [photo()]}), tmp_path / "pq" / "x.parquet")
    assert source_from_arg(str(tmp_path / "pq"))[0] == "parquet"
    with pytest.raises(SourceError, match="neither a source"):
        source_from_arg(str(tmp_path / "missing"))


def test_synthetic_is_deterministic_and_sized():
    a = np.asarray(synthetic_image(5, seed=1, size=48, num_classes=10))
    assert a.shape == (48, 48, 3)
    assert np.array_equal(a, np.asarray(synthetic_image(5, seed=1, size=48, num_classes=10)))
    assert not np.array_equal(a, np.asarray(synthetic_image(5, seed=2, size=48, num_classes=10)))
    source = LocalSource(DataConfig(source="synthetic", num_samples=25, image_size=40))
    assert len(source) == 25 and source[24]["label"] == 4
    assert decode_rgb(source[3]["image"]).size == (40, 40)


def test_synthetic_classes_are_recoverable():
    """A linear classifier on translation-invariant features (the Fourier amplitude) of held-out
    images beats chance by far: the classes are in what the images show."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def features(i: int) -> np.ndarray:
        img = synthetic_image(i, seed=0, size=32, num_classes=10).convert("L")
        return np.log1p(np.abs(np.fft.rfft2(np.asarray(img, dtype=np.float32) / 255))).ravel()

    x = np.stack([features(i) for i in range(1200)])
    y = np.arange(1200) % 10
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    accuracy = model.fit(x[:1000], y[:1000]).score(x[1000:], y[1000:])
    assert accuracy > 0.5, accuracy  # chance is 0.1; measured 0.71


def test_digits_are_the_bundled_1797_labelled_images():
    source = LocalSource(DataConfig(source="digits", image_size=32))
    assert len(source) == 1797
    labels = [source[i]["label"] for i in range(0, 1797, 50)]
    assert set(labels) <= set(range(10)) and len(set(labels)) == 10
    img = decode_rgb(source[0]["image"])
    assert img.size == (32, 32)
    assert class_names(DataConfig(source="digits")) == [str(d) for d in range(10)]


def test_relative_paths_are_resolved_and_keys_are_relative(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "imgs", per_class=2, bad=False)
    monkeypatch.chdir(tmp_path)
    source = LocalSource(DataConfig(source="folder", path="imgs"))
    keys = sorted(source[i]["key"] for i in range(len(source)))
    assert keys == ["cat/000.jpg", "cat/001.png", "dog/000.jpg", "dog/001.png"]
    assert list_image_folder("imgs").root == str(tmp_path / "imgs")  # absolute for Ray tasks


def test_parquet_columns_of_the_wrong_type_are_refused(tmp_path):
    pq.write_table(pa.table({"image": [photo()], "label": ["cat"]}), tmp_path / "a.parquet")
    with pytest.raises(SourceError, match="column 'label' has type string, expected an integer"):
        LocalSource(DataConfig(source="parquet", path=str(tmp_path)))


def test_num_samples_takes_a_fixed_spread_of_the_folder(tmp_path):
    make_image_folder(tmp_path, per_class=10, bad=False)
    cfg = DataConfig(source="folder", path=str(tmp_path), num_samples=6)
    first, second = LocalSource(cfg), LocalSource(cfg)
    assert len(first) == 6
    assert [first[i]["key"] for i in range(6)] == [second[i]["key"] for i in range(6)]
    assert {first[i]["label"] for i in range(6)} == {0, 1}  # not just the first class


def _keys(cfg: DataConfig) -> list[str]:
    source = LocalSource(cfg)
    return [source[i]["key"] for i in range(len(source))]


@pytest.mark.parametrize("source", ["digits", "synthetic", "folder", "parquet"])
def test_train_and_val_splits_partition_every_source(source, tmp_path):
    path = None
    if source in ("folder", "parquet"):
        make_image_folder(tmp_path / "imgs", per_class=40, bad=False)
        path = str(tmp_path / "imgs")
    if source == "parquet":
        from lejepa_ray.data.convert import convert_image_folder

        convert_image_folder(path, str(tmp_path / "pq"))
        path = str(tmp_path / "pq")
    cfg = DataConfig(
        source=source, path=path, num_samples=200 if source == "synthetic" else None, image_size=16
    )
    every, train, val = (set(_keys(replace(cfg, split=s))) for s in ("all", "train", "val"))
    assert train | val == every and not train & val
    assert 0.1 < len(val) / len(every) < 0.3
    assert all(in_split(k, "val") and not in_split(k, "train") for k in val)


def test_a_capped_split_keeps_its_own_samples_only():
    capped = _keys(DataConfig(source="digits", split="val", num_samples=50))
    assert len(capped) == 50 and all(in_split(k, "val") for k in capped)


def test_data_from_arg_reads_a_split_suffix(tmp_path):
    assert (data_from_arg("digits:val").source, data_from_arg("digits:val").split) == (
        "digits",
        "val",
    )
    assert data_from_arg("digits").split == "all"
    make_image_folder(tmp_path / "imgs", per_class=1, bad=False)
    cfg = data_from_arg(f"{tmp_path / 'imgs'}:train")
    assert (cfg.source, cfg.path, cfg.split) == ("folder", str(tmp_path / "imgs"), "train")
    with pytest.raises(ValueError, match=r"data.split='test' is invalid"):
        DataConfig(source="digits", split="test")
