"""lejepa_ray.data.preview: `lejepa-ray data preview`, the picture of the training views.

The tiles are compared with what the pipeline itself makes: the rows its reader reads
(``readers.source_plan``), the views task's ``stream.unit_views``, and with
``data.augment_on=device`` the trainer's ``device_views.augment_batch``. No Ray is started."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lejepa_ray.cli import main
from lejepa_ray.data.config import DataConfig, ViewConfig
from lejepa_ray.data.device_views import augment_batch
from lejepa_ray.data.plan import Span
from lejepa_ray.data.preview import HEADER, PAD, PreviewOptions, layout_of, preview
from lejepa_ray.data.readers import source_plan
from lejepa_ray.data.stream import unit_views
from lejepa_ray.data.views import ViewMaker
from lejepa_ray.errors import ConfigError, SourceError

# Small views with every photometric op likely to fire, so that a mode that skipped one, or a
# tile that came from another sample or seed, would show.
VIEWS = ViewConfig(
    global_views=2,
    global_size=24,
    global_scale=(0.3, 1.0),
    local_views=3,
    local_size=12,
    local_scale=(0.1, 0.4),
    jitter_p=1.0,
    grayscale_p=0.3,
    blur_p=0.5,
    solarize_p=0.3,
)
DATA = DataConfig(source="synthetic", num_samples=24, image_size=40, views=VIEWS, seed=3)


def _pipeline_views(cfg: DataConfig, epoch: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """key -> (global, local) views of every sample of ``cfg``, made as training makes them:
    the pipeline's reader and views task, then, for augment_on=device, the trainer's ops."""
    listed = source_plan(cfg)
    rows = listed.reader.read([Span(i, 0, int(n)) for i, n in enumerate(listed.plan.sizes)])
    block, _ = unit_views(rows, epoch, ViewMaker.of(cfg), cfg)
    if cfg.augment_on == "device":
        tensors = {k: torch.from_numpy(v) for k, v in block.items() if k != "label"}
        done = augment_batch(tensors, cfg.views)
        block = {k: v.round().clamp(0, 255).to(torch.uint8).numpy() for k, v in done.items()}
    keys = [str(k) for k in rows["key"]]
    return {keys[i]: (block["global"][i], block["local"][i]) for i in range(len(keys))}


def _read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_the_picture_has_a_row_per_sample_and_a_column_per_view(tmp_path):
    out = tmp_path / "views.png"
    result = preview(PreviewOptions(src="synthetic", out=str(out), samples=3, zoom=2), DATA)
    picture = _read_png(out)
    row, g, loc = 2 * 24, 2 * 24, 2 * 12  # zoom 2: the row as high as a global view
    width = PAD + (row + PAD) + 2 * (g + PAD) + 3 * (loc + PAD)  # image, 2 global, 3 local
    height = HEADER + PAD + 3 * (row + PAD)
    assert picture.shape == (height, width, 3)
    assert (result.layout.rows, result.layout.columns) == (3, 1 + 2 + 3)
    assert len(result.keys) == 3 and len(set(result.keys)) == 3


@pytest.mark.parametrize("augment_on", ["cpu", "device"])
def test_the_tiles_are_the_views_the_pipeline_makes(augment_on, tmp_path):
    """Every global and local tile of the PNG, shrunk back by the zoom, is the pipeline's view
    of that sample for the same seed and epoch, byte for byte."""
    out = tmp_path / "views.png"
    options = PreviewOptions(
        src="synthetic", out=str(out), samples=4, zoom=3, epoch=1, augment_on=augment_on
    )
    result = preview(options, DATA)
    assert result.data.augment_on == augment_on
    expected = _pipeline_views(result.data, epoch=1)
    picture, lay = _read_png(out), result.layout
    for r, key in enumerate(result.keys):
        views = [*expected[key][0], *expected[key][1]]
        for c, view in enumerate(views, start=1):
            left, top, right, bottom = lay.view_box(r, c)
            tile = picture[top:bottom:3, left:right:3]  # zoom 3: every third pixel
            np.testing.assert_array_equal(tile, view.transpose(1, 2, 0), err_msg=f"{key} {c}")


def test_both_modes_draw_the_same_crops(tmp_path):
    """The crops (and the parameters) are drawn in the data task either way: without
    photometric ops the two modes give the same picture, and with them the device path stays
    within rounding of the CPU path."""
    plain = replace(
        DATA,
        views=replace(VIEWS, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0),
    )
    pictures = {}
    for mode in ("cpu", "device"):
        out = tmp_path / f"{mode}.png"
        preview(PreviewOptions(src="synthetic", out=str(out), augment_on=mode), plain)
        pictures[mode] = _read_png(out)
    np.testing.assert_array_equal(pictures["cpu"], pictures["device"])
    coloured = {}
    for mode in ("cpu", "device"):
        out = tmp_path / f"c-{mode}.png"
        preview(PreviewOptions(src="synthetic", out=str(out), augment_on=mode), DATA)
        coloured[mode] = _read_png(out).astype(np.int16)
    assert np.abs(coloured["cpu"] - coloured["device"]).mean() < 3.0


def test_the_seed_and_the_epoch_choose_the_crops(tmp_path):
    def picture(**kwargs) -> np.ndarray:
        out = tmp_path / "p.png"
        preview(PreviewOptions(src="synthetic", out=str(out), samples=2, **kwargs), DATA)
        return _read_png(out)

    first = picture()
    assert picture(seed=DATA.seed).tobytes() == first.tobytes()  # data.seed is the default
    assert picture(seed=DATA.seed + 1).tobytes() != first.tobytes()
    assert picture(epoch=1).tobytes() != first.tobytes()


def test_undecodable_images_are_skipped_and_a_split_suffix_is_read(tmp_path):
    from images import make_image_folder

    make_image_folder(tmp_path / "imgs", per_class=3, bad=True)
    out = tmp_path / "v.png"
    data = replace(DATA, split="train")
    result = preview(PreviewOptions(src=f"{tmp_path / 'imgs'}:all", out=str(out), samples=6), data)
    assert result.data.split == "all" and result.data.source == "folder"
    assert len(result.keys) == 6  # the 6 good images; the 4 bad ones skipped
    assert not any(
        k.endswith(("empty.jpg", "readme.png", "cut.JPG", "bomb.png")) for k in result.keys
    )
    assert preview(PreviewOptions(src="digits", out=str(out)), data).data.split == "train"


def test_parquet_shards_under_a_split_show_the_pipeline_s_rows(tmp_path):
    """The leading shards only are read under a split; the keys and views are still those of
    the pipeline's parquet reader."""
    from images import make_image_folder

    from lejepa_ray.data.convert import convert_image_folder

    make_image_folder(tmp_path / "imgs", per_class=8, bad=False)
    convert_image_folder(str(tmp_path / "imgs"), str(tmp_path / "pq"), shard_size_mb=0.01)
    assert len(list((tmp_path / "pq").glob("*.parquet"))) > 1
    out = tmp_path / "v.png"
    options = PreviewOptions(src=f"{tmp_path / 'pq'}:val", out=str(out), samples=2, zoom=1)
    result = preview(options, DATA)
    assert result.data.source == "parquet" and len(result.keys) == 2
    expected = _pipeline_views(result.data)
    picture = _read_png(out)
    for r, key in enumerate(result.keys):
        left, top, right, bottom = result.layout.view_box(r, 1)
        np.testing.assert_array_equal(
            picture[top:bottom, left:right], expected[key][0][0].transpose(1, 2, 0)
        )


@pytest.mark.parametrize(
    ("options", "error", "fragment"),
    [
        ({"src": "/no/such/folder"}, SourceError, "^src='/no/such/folder' is neither a source"),
        ({"src": "digits", "samples": 0}, ConfigError, "^samples=0 is invalid"),
        ({"src": "digits", "augment_on": "gpu"}, ConfigError, "^augment_on='gpu' is invalid"),
        ({"src": "digits", "zoom": 0}, ConfigError, "^zoom=0 is invalid"),
    ],
    ids=["missing-src", "no-samples", "bad-augment-on", "bad-zoom"],
)
def test_bad_options_say_what_was_wrong(options, error, fragment, tmp_path):
    with pytest.raises(error, match=fragment):
        preview(PreviewOptions(out=str(tmp_path / "v.png"), **options), DATA)
    assert not (tmp_path / "v.png").exists()


def test_the_command_writes_the_picture_of_the_quickstart_views(tmp_path, capsys):
    out = tmp_path / "sub" / "views.png"
    args = ["data", "preview", "digits", "--out", str(out), "--samples", "2"]
    assert main([*args, "--data.views.local_views", "1", "--augment_on", "device"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "augment_on=device" in printed
    # The quickstart's views (32 px global, 16 px local) at the automatic zoom of 4.
    picture = _read_png(out)
    assert picture.shape == (
        HEADER + PAD + 2 * (128 + PAD),
        PAD + 2 * (128 + PAD) + 128 + 64 + 2 * PAD,
        3,
    )


@pytest.mark.parametrize(
    ("src", "fragment"),
    [
        ("/no/such/folder", "SRC='/no/such/folder' is neither a source (synthetic, digits) nor"),
        ("EMPTY", "holds no images"),
    ],
    ids=["missing", "empty-folder"],
)
def test_a_bad_src_is_one_line_through_the_command(src, fragment, tmp_path, capsys):
    (tmp_path / "EMPTY").mkdir()
    src = str(tmp_path / "EMPTY") if src == "EMPTY" else src
    assert main(["data", "preview", src, "--out", str(tmp_path / "v.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lejepa-ray: error: ") and len(err.strip().splitlines()) == 1, err
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "v.png").exists()


def test_the_layout_refuses_the_image_column_as_a_view():
    lay = layout_of(1, DATA, zoom=1)
    with pytest.raises(IndexError):
        lay.view_box(0, 0)
    assert lay.titles() == ["image", "g1", "g2", "l1", "l2", "l3"]  # 12-24 px: too narrow
    assert layout_of(1, DATA, zoom=4).titles()[1] == "global 1"
