"""The epoch plan (data/plan.py) and the readers that fetch its units (data/readers.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.plan import Plan, Span
from lejepa_ray.data.readers import ParquetReader, source_plan
from lejepa_ray.data.sources import LocalSource


def epoch_rows(plan: Plan, epoch: int) -> list[tuple[int, int]]:
    """(piece, row in piece) of every row of ``epoch``, unit after unit."""
    rows = []
    for k in range(plan.units_per_epoch):
        e, spans = plan.unit(epoch * plan.units_per_epoch + k)
        assert e == epoch
        assert sum(s.stop - s.start for s in spans) == min(
            plan.unit_rows, plan.rows_per_epoch - k * plan.unit_rows
        )
        rows += [(s.piece, r) for s in spans for r in range(s.start, s.stop)]
    return rows


@pytest.mark.parametrize("sizes", [[1] * 10, [5, 3, 7, 1, 64], [64, 64, 31]])
def test_every_epoch_reads_every_row_once_in_a_new_order(sizes):
    plan = Plan(np.array(sizes), unit_rows=4, seed=7)
    all_rows = sorted((p, r) for p, n in enumerate(sizes) for r in range(n))
    epochs = [epoch_rows(plan, e) for e in range(4)]
    assert all(sorted(rows) == all_rows for rows in epochs)
    assert len({tuple(rows) for rows in epochs}) > 1  # reordered (3 pieces have 6 orders)
    assert epoch_rows(Plan(np.array(sizes), 4, seed=7), 1) == epochs[1]  # seeded
    assert epoch_rows(Plan(np.array(sizes), 4, seed=8), 1) != epochs[1]
    # Rows of one piece stay together and in order: a unit reads a row group's run of rows.
    pieces = [p for p, _ in epochs[0]]
    assert len(pieces) - sum(a == b for a, b in itertools.pairwise(pieces)) == len(sizes)


def test_without_shuffle_every_epoch_reads_the_pieces_as_listed():
    plan = Plan(np.array([2, 3, 1]), unit_rows=2, seed=0, shuffle=False)
    expected = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0)]
    assert epoch_rows(plan, 0) == epoch_rows(plan, 5) == expected


def test_a_position_names_its_unit_and_the_rows_before_it_are_skipped():
    plan = Plan(np.array([5, 3, 7, 1]), unit_rows=4, seed=1)  # 16 rows, 4 units an epoch
    rows = epoch_rows(plan, 2)
    for samples in range(plan.rows_per_epoch):
        g, offset = plan.locate(2, samples)
        epoch, spans = plan.unit(g, skip=offset)
        assert epoch == 2
        got = [(s.piece, r) for s in spans for r in range(s.start, s.stop)]
        assert got == rows[samples : (samples // 4 + 1) * 4]  # the rest of that unit
    assert plan.locate(2, 16) == plan.locate(3, 0) == (12, 0)  # past the end: the next epoch


def test_the_plan_travels_without_its_cache():
    import pickle

    plan = Plan(np.array([3, 3]), unit_rows=2, seed=0)
    plan.unit(0)
    assert plan._orders and not pickle.loads(pickle.dumps(plan))._orders
    assert pickle.loads(pickle.dumps(plan)).unit(1) == plan.unit(1)


def write_shards(folder, rows: int = 100, group: int = 16) -> None:
    table = pa.table(
        {
            "image": pa.array([f"img{i}".encode() for i in range(rows)], pa.binary()),
            "label": pa.array(np.arange(rows) % 3, pa.int64()),
            "path": pa.array([f"c{i % 3}/{i:04d}.jpg" for i in range(rows)], pa.string()),
        }
    )
    folder.mkdir()
    pq.write_table(table.slice(0, 60), folder / "a.parquet", row_group_size=group)
    pq.write_table(table.slice(60), folder / "b.parquet", row_group_size=group)


@pytest.mark.parametrize("shuffle", ["files", "full", "none"])
def test_parquet_units_read_the_rows_local_source_reads(tmp_path, shuffle):
    write_shards(tmp_path / "shards")
    cfg = DataConfig(
        source="parquet", path=str(tmp_path / "shards"), transform_batch_size=8, shuffle=shuffle
    )
    listed = source_plan(cfg)
    plan = listed.plan
    pieces = 100 if shuffle == "full" else 7  # rows, or row groups: 4 + 3 (16 rows or fewer)
    assert len(plan.sizes) == pieces and plan.rows_per_epoch == 100
    keys = []
    for g in range(plan.units_per_epoch):
        _epoch, spans = plan.unit(g)
        rows = listed.reader.read(spans)
        assert len(rows["image"]) == len(rows["label"]) == len(rows["key"])
        keys += list(rows["key"])
    local = LocalSource(cfg)
    assert sorted(keys) == sorted(local[i]["key"] for i in range(len(local)))
    ordered = keys == [local[i]["key"] for i in range(len(local))]
    assert ordered == (shuffle == "none")


def test_a_parquet_reader_reads_each_row_group_once_for_consecutive_units(tmp_path, monkeypatch):
    write_shards(tmp_path / "shards", group=32)
    files = sorted(str(p) for p in (tmp_path / "shards").iterdir())
    reader = ParquetReader.of(files, pa.fs.LocalFileSystem(), ["image", "label", "path"], "all")
    reads = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pq.ParquetFile,
        "read_row_group",
        lambda self, g, **kw: reads.append(g) or real(self, g, **kw),
    )
    first = reader.read([Span(0, 0, 16)])
    second = reader.read([Span(0, 16, 32)])
    assert reads == [0]
    assert list(first["key"]) + list(second["key"]) == [f"c{i % 3}/{i:04d}.jpg" for i in range(32)]


def test_generated_and_folder_sources_plan_one_piece_per_image(tmp_path):
    from images import make_image_folder

    make_image_folder(tmp_path / "imgs", per_class=3, bad=False)
    for cfg in (
        DataConfig(source="synthetic", num_samples=20, image_size=16, transform_batch_size=6),
        DataConfig(source="folder", path=str(tmp_path / "imgs"), transform_batch_size=4),
    ):
        listed = source_plan(cfg)
        local = LocalSource(cfg)
        assert listed.plan.rows_per_epoch == len(local) and set(listed.plan.sizes) == {1}
        rows = listed.reader.read([Span(p, 0, 1) for p in range(len(local))])
        assert list(rows["key"]) == [local[i]["key"] for i in range(len(local))]
        assert list(rows["image"]) == [local[i]["image"] for i in range(len(local))]
        assert rows["label"].tolist() == [local[i]["label"] for i in range(len(local))]


def test_a_source_without_samples_in_its_split_is_refused_with_the_split():
    from lejepa_ray.errors import SourceError

    with pytest.raises(SourceError, match=r"no samples in data.split=val"):
        source_plan(DataConfig(source="synthetic", num_samples=2, split="val"))


def test_parquet_units_across_files_of_different_column_types_read(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name, kind in (("a", pa.int32()), ("b", pa.int64())):
        table = pa.table(
            {
                "image": pa.array([b"x", b"y"], pa.binary()),
                "label": pa.array([0, 1], kind),
                "path": pa.array([f"{name}0", f"{name}1"], pa.string()),
            }
        )
        pq.write_table(table, folder / f"{name}.parquet")
    listed = source_plan(DataConfig(source="parquet", path=str(folder), shuffle="none"))
    rows = listed.reader.read(listed.plan.unit(0)[1])  # both files in one unit
    assert list(rows["key"]) == ["a0", "a1", "b0", "b1"] and rows["label"].tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("shuffle", ["files", "full"])
def test_a_parquet_split_counts_and_reads_only_its_rows(tmp_path, shuffle):
    write_shards(tmp_path / "shards")
    cfg = DataConfig(
        source="parquet",
        path=str(tmp_path / "shards"),
        split="train",
        transform_batch_size=8,
        shuffle=shuffle,
    )
    listed = source_plan(cfg)
    local = LocalSource(cfg)
    assert 50 < listed.plan.rows_per_epoch == len(local) < 100
    keys = []
    for g in range(listed.plan.units_per_epoch):
        keys += list(listed.reader.read(listed.plan.unit(g)[1])["key"])
    assert sorted(keys) == sorted(local[i]["key"] for i in range(len(local)))


def test_a_pass_holds_whole_epochs_and_enough_tasks_for_every_slot():
    from lejepa_ray.data.stream import MIN_PASS_UNITS, epochs_per_pass

    cfg = DataConfig(task_units=64)
    small = Plan(np.ones(600, np.int64), unit_rows=32, seed=0)  # 19 units an epoch
    assert epochs_per_pass(small, cfg, slots=2) == -(-MIN_PASS_UNITS // 19) == 216
    assert epochs_per_pass(small, cfg, slots=32) == -(-(32 * 32 * 64) // 19)  # 32 waves
    large = Plan(np.ones(1_281_167, np.int64), unit_rows=32, seed=0)
    assert epochs_per_pass(large, cfg, slots=32) == 2 and epochs_per_pass(large, cfg, 2) == 1


def test_a_pass_is_no_longer_than_the_run_needs_and_one_spare_epoch():
    from lejepa_ray.data.stream import epochs_per_pass

    small = Plan(np.ones(600, np.int64), unit_rows=32, seed=0)  # 216 epochs uncapped
    exact = DataConfig(task_units=64, max_skip_rate=0.0)
    assert epochs_per_pass(small, exact, 2, 26_304) == -(-26_304 // 600) + 1 == 45
    assert epochs_per_pass(small, exact, 2, 600) == 2 and epochs_per_pass(small, exact, 2, 1) == 2
    assert epochs_per_pass(small, exact, 2, 10**9) == 216  # a long run keeps the usual pass
    # Epochs are counted at their worst tolerated yield: 5% bad images deliver 570 of 600 rows.
    lossy = DataConfig(task_units=64, max_skip_rate=0.05)
    assert epochs_per_pass(small, lossy, 2, 26_304) == -(-26_304 // 570) + 1 == 48
    assert epochs_per_pass(small, DataConfig(max_skip_rate=1.0), 2, 600) == 216  # no bound


def test_a_run_takes_its_steps_and_its_read_ahead_from_the_stream():
    from lejepa_ray.config import OptimConfig, PretrainConfig, ScalingConfig
    from lejepa_ray.launch.preflight import READ_AHEAD_EXTRA, run_rows

    def cfg(steps=400, accum=1, batch=32, workers=2, prefetch=8):
        return PretrainConfig(
            optim=OptimConfig(steps=steps, warmup_steps=0, accum_steps=accum),
            scaling=ScalingConfig(batch_size=batch, num_workers=workers),
            data=DataConfig(prefetch_batches=prefetch),
        )

    ahead = 8 + READ_AHEAD_EXTRA  # batches prefetched, and the one waiting to be queued
    assert run_rows(cfg()) == (400 + ahead) * 64  # 2 workers of 32
    assert run_rows(cfg(prefetch=0)) == (400 + READ_AHEAD_EXTRA) * 64
    assert run_rows(cfg(steps=10, accum=3)) == (30 + ahead) * 64  # every micro-batch draws
    # An elastic group of 2 or 3 with a global batch of 15 draws 8 + 8 on 2 ranks, 5 × 3 on 3.
    assert run_rows(cfg(steps=10, batch=5, workers=[2, 3])) == (10 + ahead) * 16


def test_the_driver_bounds_the_stream_by_the_run(monkeypatch):
    from ray.data import DataContext

    from lejepa_ray.config import OptimConfig, PretrainConfig
    from lejepa_ray.launch import driver, preflight

    context = DataContext.get_current()  # _start_ray turns its progress bars off: restore them
    monkeypatch.setattr(context, "enable_progress_bars", context.enable_progress_bars)
    built = {}
    monkeypatch.setattr(driver.runtime, "connect", lambda **kwargs: None)
    monkeypatch.setattr(driver, "build_view_stream", lambda data, **kw: built.update(kw))
    cfg = PretrainConfig(optim=OptimConfig(steps=50, warmup_steps=0))
    driver._start_ray(cfg, listed=None)
    assert built == {"listed": None, "run_rows": preflight.run_rows(cfg)}


def test_a_source_smaller_than_a_step_s_rows_is_refused_before_ray():
    from lejepa_ray.config import PretrainConfig, ScalingConfig
    from lejepa_ray.errors import SourceError
    from lejepa_ray.launch.preflight import check_epoch_holds_a_batch

    plan = Plan(np.ones(100, np.int64), unit_rows=32, seed=0)
    cfg = PretrainConfig(scaling=ScalingConfig(batch_size=16, num_workers=2))  # 32 a step
    check_epoch_holds_a_batch(plan, cfg)
    cfg = PretrainConfig(scaling=ScalingConfig(batch_size=64, num_workers=2))  # 128 a step
    with pytest.raises(SourceError, match=r"has 100 samples .* fewer than the 128 a step draws"):
        check_epoch_holds_a_batch(plan, cfg)
    # Elastic: a global batch of 100 (50 × 2) draws 100 a step on 1 or 2 workers; 150 does not fit.
    cfg = PretrainConfig(scaling=ScalingConfig(batch_size=50, num_workers=[1, 2]))
    check_epoch_holds_a_batch(plan, cfg)
    cfg = PretrainConfig(scaling=ScalingConfig(batch_size=50, num_workers=[2, 3]))  # 150
    with pytest.raises(SourceError):
        check_epoch_holds_a_batch(plan, cfg)
