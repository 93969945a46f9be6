"""The source protocol and registry (lejepa_ray.data.source): toy sources defined here alone,
read, planned and named on the command line like the built-ins; unknown and taken names;
a source carried with a pickled config; no branch on a source's name outside the sources."""

from __future__ import annotations

import ast
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lejepa_ray.data import registry, source
from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.decode import decode_rgb
from lejepa_ray.data.keys import in_split
from lejepa_ray.data.plan import Span
from lejepa_ray.data.readers import source_plan
from lejepa_ray.data.registry import get_source, source_names
from lejepa_ray.data.source import BUILT_IN, IndexedSource, Row, register_source
from lejepa_ray.data.sources import (
    LocalSource,
    check_path,
    class_names,
    data_from_arg,
    source_from_arg,
)
from lejepa_ray.errors import ConfigError, SourceError

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "lejepa_ray"
COLOURS = [(220, 30, 30), (30, 160, 30), (30, 30, 220)]


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class ToySquares(IndexedSource):
    """A square of one of three colours on white, at a place that depends on the sample:
    ``data.num_samples`` (default 60) made, then split."""

    generated = True
    num_samples_before_split = True

    def ids(self, cfg: DataConfig) -> list[int]:
        made = range(cfg.num_samples or 60)
        return [n for n in made if in_split(f"toy_squares/{n}", cfg.split)]

    def size(self, cfg: DataConfig) -> int:
        return len(self.ids(cfg))

    def row(self, cfg: DataConfig, i: int) -> Row:
        n, s = self.ids(cfg)[i], cfg.image_size
        pixels = np.full((s, s, 3), 255, np.uint8)
        at = n % (s // 2)
        pixels[at : at + s // 2, at : at + s // 2] = COLOURS[n % 3]
        return {"image": png(pixels), "label": n % 3, "key": f"toy_squares/{n}"}

    def class_names(self, cfg: DataConfig) -> list[str]:
        return ["red", "green", "blue"]


class ToyColours(IndexedSource):
    """A source with a path: a folder holding ``colours.txt``, one ``r g b`` line per image
    (a plain colour, unlabelled)."""

    needs_path = True
    path_wanted = "folder with a colours.txt"
    path_kind = "a folder with a colours.txt"

    def claims(self, filesystem, path, info) -> bool:
        return (Path(path) / "colours.txt").is_file()

    def lines(self, cfg: DataConfig) -> list[str]:
        assert cfg.path is not None
        return (Path(cfg.path) / "colours.txt").read_text().split("\n")[:-1]

    def size(self, cfg: DataConfig) -> int:
        return len(self.lines(cfg))

    def row(self, cfg: DataConfig, i: int) -> Row:
        colour = [int(c) for c in self.lines(cfg)[i].split()]
        pixels = np.full((8, 8, 3), colour, np.uint8)
        return {"image": png(pixels), "label": -1, "key": f"colours/{i}"}

    def class_names(self, cfg: DataConfig) -> None:
        return None


@pytest.fixture(autouse=True)
def toys():
    """The toys registered for each test here, and gone after it: the other tests see the
    built-ins alone (their messages list the names)."""
    before = {name: get_source(name) for name in source_names()}
    register_source("toy_squares")(ToySquares)  # what @register_source("toy_squares") does
    register_source("toy_colours")(ToyColours)
    yield
    source.SOURCES.clear()
    source.SOURCES.update(before)


def test_the_built_ins_come_first_and_the_registered_follow():
    names = source_names()
    assert names[:4] == list(BUILT_IN) == ["folder", "parquet", "synthetic", "digits"]
    assert {"toy_squares", "toy_colours"} <= set(names[4:])
    assert get_source("toy_squares").name == "toy_squares"
    assert isinstance(get_source("toy_squares"), ToySquares)


def test_an_unknown_name_is_a_config_error_listing_the_registered_ones():
    with pytest.raises(ConfigError, match=r"expected one of folder, parquet, synthetic, digits"):
        get_source("imagenet")
    with pytest.raises(ConfigError) as raised:
        DataConfig(source="imagenet")
    message = str(raised.value)
    assert message.startswith("data.source='imagenet' is invalid: expected one of folder")
    assert "toy_squares" in message and "toy_colours" in message


def test_a_taken_name_is_refused_unless_it_is_the_same_class_again():
    # A built-in's name is refused even before the built-ins are loaded (they load lazily).
    with pytest.raises(ConfigError, match=r"data.source=digits is a built-in source's name"):

        @register_source("digits")
        class Impostor(ToySquares):
            pass

    with pytest.raises(ConfigError, match=r"data.source=toy_squares is registered already"):

        @register_source("toy_squares")
        class Twin(ToySquares):
            pass

    assert type(get_source("digits")).__name__ == "DigitsSource"
    before = get_source("toy_squares")
    register_source("toy_squares")(ToySquares)  # a module imported twice: replaced, no error
    assert get_source("toy_squares") is not before and isinstance(
        get_source("toy_squares"), ToySquares
    )


def test_a_toy_source_reads_locally_with_its_labels_and_split():
    cfg = DataConfig(source="toy_squares", num_samples=40, image_size=16)
    rows = LocalSource(cfg)
    assert len(rows) == 40 and class_names(cfg) == ["red", "green", "blue"]
    image = decode_rgb(rows[4]["image"])
    assert image.size == (16, 16) and rows[4]["label"] == 1 and rows[4]["key"] == "toy_squares/4"
    with pytest.raises(IndexError):
        rows[40]
    train = LocalSource(DataConfig(source="toy_squares", num_samples=40, split="train"))
    val = LocalSource(DataConfig(source="toy_squares", num_samples=40, split="val"))
    keys = [train[i]["key"] for i in range(len(train))] + [val[i]["key"] for i in range(len(val))]
    assert sorted(keys) == sorted(rows[i]["key"] for i in range(40)) and len(val) > 0


def test_a_toy_source_is_planned_and_read_as_the_views_tasks_read_it():
    cfg = DataConfig(source="toy_squares", num_samples=30, image_size=16, transform_batch_size=8)
    listed = source_plan(cfg)
    local = LocalSource(cfg)
    assert listed.plan.rows_per_epoch == len(local) == 30 and listed.classes == [
        "red",
        "green",
        "blue",
    ]
    rows = pickle.loads(pickle.dumps(listed.reader)).read([Span(p, 0, 1) for p in range(30)])
    assert list(rows["key"]) == [local[i]["key"] for i in range(30)]
    assert list(rows["image"]) == [local[i]["image"] for i in range(30)]
    assert rows["label"].dtype == np.int64 and rows["label"].tolist() == [i % 3 for i in range(30)]


def test_a_toy_name_is_a_data_argument_and_its_capabilities_reach_the_config_checks():
    assert source_from_arg("toy_squares") == ("toy_squares", None)
    cfg = data_from_arg("toy_squares:val", image_size=24)
    assert (cfg.source, cfg.path, cfg.split, cfg.image_size) == ("toy_squares", None, "val", 24)
    with pytest.raises(SourceError, match=r"neither a source \(synthetic, digits, toy_squares\)"):
        source_from_arg("/no/such/toy")

    from lejepa_ray.config import check_run, load_config

    small = ["data.source=toy_squares", "data.num_samples=40", "scaling.batch_size=32"]
    with pytest.raises(ConfigError, match=r"data.num_samples=40 split over 2 workers"):
        check_run(load_config(None, small))  # generated: checked on data.num_samples


def test_a_path_source_claims_its_folders_before_the_image_folder(tmp_path):
    (tmp_path / "colours.txt").write_text("255 0 0\n0 0 255\n")
    assert source_from_arg(str(tmp_path)) == ("toy_colours", str(tmp_path))
    (tmp_path / "other").mkdir()
    assert source_from_arg(str(tmp_path / "other")) == ("folder", str(tmp_path / "other"))
    rows = LocalSource(DataConfig(source="toy_colours", path=str(tmp_path)))
    assert len(rows) == 2 and decode_rgb(rows[1]["image"]).getpixel((0, 0)) == (0, 0, 255)
    with pytest.raises(ConfigError, match=r"needs data.path: set data.path to the folder with"):
        DataConfig(source="toy_colours")
    with pytest.raises(SourceError, match=r"does not exist: point it at a folder with a colours"):
        check_path(DataConfig(source="toy_colours", path=str(tmp_path / "nope")))


def test_a_pickled_config_carries_a_registered_source_but_not_a_built_in(monkeypatch):
    toy = DataConfig(source="toy_squares", num_samples=10, image_size=16)
    built_in = DataConfig(source="digits")
    assert registry.travelling("digits") is None and "_registered_source" not in (
        built_in.__getstate__()
    )
    payload = pickle.dumps(toy)
    # A process that never registered the toy (a Ray worker importing lejepa_ray afresh):
    monkeypatch.delitem(source.SOURCES, "toy_squares")
    with pytest.raises(ConfigError):
        DataConfig(source="toy_squares")
    arrived = pickle.loads(payload)
    assert arrived == toy and isinstance(get_source("toy_squares"), ToySquares)
    assert len(LocalSource(arrived)) == 10


SOURCE_MODULES = {"data/source.py"} | {
    str(p.relative_to(PACKAGE)) for p in (PACKAGE / "data").glob("source_*.py")
}


def _name_branches(path: Path) -> list[int]:
    """Lines of ``path`` comparing a ``.source`` attribute with a string (or strings)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        named = any(isinstance(s, ast.Attribute) and s.attr == "source" for s in sides)
        strings = [
            s
            for s in sides
            for e in (s.elts if isinstance(s, (ast.Tuple, ast.List, ast.Set)) else [s])
            if isinstance(e, ast.Constant) and isinstance(e.value, str)
        ]
        if named and strings:
            found.append(node.lineno)
    return found


def test_no_module_outside_the_sources_branches_on_a_source_name():
    """``cfg.source == "synthetic"`` belongs in a source's module: elsewhere, ask the source
    (``get_source(name)``) for the capability the branch means."""
    found = [
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if str(path.relative_to(PACKAGE)) not in SOURCE_MODULES
        for line in _name_branches(path)
    ]
    assert not found, "branches on a data.source name:\n" + "\n".join(found)


def test_the_name_branch_scan_finds_one(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('if cfg.data.source in ("synthetic", "digits"):\n    pass\n')
    bad2 = tmp_path / "bad2.py"
    bad2.write_text('x = 1\nok = data.source != "parquet"\n')
    assert _name_branches(bad) == [1] and _name_branches(bad2) == [2]
