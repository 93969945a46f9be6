"""lejepa_ray.data.stream on a real local Ray instance: Ray Data -> Ray Train, 2 workers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray
import torch
from images import make_image_folder

from lejepa_ray.data.config import DataConfig, ViewConfig
from lejepa_ray.data.feed import iter_views
from lejepa_ray.data.stream import DataQualityError, build_view_stream

pytestmark = pytest.mark.slow

TINY = ViewConfig(global_views=2, global_size=32, local_views=3, local_size=16)


def epoch_views(stream, cfg, batch_size=4) -> dict[int, tuple]:
    """One epoch through ``iter_views``: sample id -> (epoch, global views, local views)."""
    out = {}
    for batch in iter_views(stream.dataset, stream.counter, cfg, batch_size, device="cpu"):
        for i, sid in enumerate(batch["sample_id"].tolist()):
            out[sid] = (
                int(batch["epoch"][i]),
                batch["global"][i].numpy(),
                batch["local"][i].numpy(),
            )
    return out


def test_epochs_are_reshuffled_and_views_are_reproducible(ray_cluster):
    cfg = DataConfig(source="synthetic", num_samples=48, image_size=48, views=TINY, seed=3)
    stream = build_view_stream(cfg, pass_epochs=1)
    orders, views = [], []
    for _ in range(2):
        order = []
        for batch in iter_views(stream.dataset, stream.counter, cfg, 8, device="cpu"):
            order += batch["sample_id"].tolist()
            views.append(
                {
                    s: (int(e), g.numpy())
                    for s, e, g in zip(
                        batch["sample_id"].tolist(), batch["epoch"], batch["global"], strict=True
                    )
                }
            )
        orders.append(order)
    assert len(orders[0]) == len(orders[1]) == 48 and set(orders[0]) == set(orders[1])
    assert orders[0] != orders[1]  # reshuffled per epoch
    epoch0 = {k: v for d in views[:6] for k, v in d.items()}
    epoch1 = {k: v for d in views[6:] for k, v in d.items()}
    assert {e for e, _ in epoch0.values()} == {0} and {e for e, _ in epoch1.values()} == {1}
    # A new pipeline started at epoch 1 (a resumed run) makes epoch 1's views exactly.
    resumed = epoch_views(build_view_stream(cfg, start_epoch=1, pass_epochs=1), cfg)
    assert {e for e, _, _ in resumed.values()} == {1}
    assert all(np.array_equal(resumed[s][1], epoch1[s][1]) for s in epoch1)
    assert not all(np.array_equal(epoch0[s][1], epoch1[s][1]) for s in epoch0)


def test_a_resumed_stream_makes_views_only_from_its_position_on(ray_cluster):
    from lejepa_ray.data.keys import stable_hash

    cfg = DataConfig(
        source="synthetic",
        num_samples=48,
        image_size=48,
        views=TINY,
        seed=3,
        transform_batch_size=8,
    )
    # 20 samples into epoch 1: the rest of epoch 1 in this pass, then all of epoch 2 in the next.
    stream = build_view_stream(cfg, start_epoch=1, start_samples=20, pass_epochs=1)
    rest = epoch_views(stream, cfg, batch_size=1)
    plan, reader = stream.plan, stream.reader
    expected = []
    for g in range(plan.units_per_epoch, 2 * plan.units_per_epoch):  # epoch 1's units
        expected += [stable_hash(k) for k in reader.read(plan.unit(g)[1])["key"]]
    assert sorted(rest) == sorted(expected[20:])
    assert {e for e, _, _ in rest.values()} == {1}
    # Only the 28 rows after the position were read and made into views.
    assert ray.get(stream.counter.totals.remote())["seen"] == 28
    assert len(epoch_views(stream, cfg, batch_size=1)) == 48  # the next pass: epoch 2, whole


def test_one_pass_streams_many_epochs_each_with_its_own_views(ray_cluster):
    cfg = DataConfig(source="synthetic", num_samples=24, image_size=48, views=TINY, seed=3)
    one = build_view_stream(cfg, pass_epochs=1)
    by_epoch = [epoch_views(one, cfg, batch_size=1) for _ in range(3)]
    three = build_view_stream(cfg, pass_epochs=3)
    rows: dict[tuple[int, int], np.ndarray] = {}
    for batch in iter_views(three.dataset, three.counter, cfg, 1, device="cpu"):
        rows[(int(batch["epoch"][0]), int(batch["sample_id"][0]))] = batch["global"][0].numpy()
    assert len(rows) == 3 * 24 and {e for e, _ in rows} == {0, 1, 2}
    assert all(
        np.array_equal(rows[(e, s)], views[s][1]) for e, views in enumerate(by_epoch) for s in views
    )


def test_blocks_reach_the_consumer_whole_and_in_one_chunk_across_epoch_ends(ray_cluster):
    """Epochs of 20 rows end in a 4-row unit; the blocks after it still hold exactly one unit
    in one Arrow chunk (a block of two chunks costs the consumer a copy of every row)."""
    views = ViewConfig(global_views=2, global_size=160, local_views=0)  # 1.2 MB a unit of 8
    cfg = DataConfig(
        source="synthetic", num_samples=20, image_size=160, views=views, transform_batch_size=8
    )
    stream = build_view_stream(cfg, pass_epochs=3)
    shapes = [
        (ray.get(entry.ref).num_rows, ray.get(entry.ref).column("global").num_chunks)
        for bundle in stream.dataset.iter_internal_ref_bundles()
        for entry in bundle.blocks
    ]
    assert sum(rows for rows, _ in shapes) == 60
    assert shapes[:-1] == [(8, 1)] * (len(shapes) - 1) and shapes[-1][0] == 4, shapes


def test_skip_rate_over_threshold_stops_with_the_reasons(ray_cluster, tmp_path):
    make_image_folder(tmp_path, per_class=2)  # 4 good, 4 bad
    cfg = DataConfig(source="folder", path=str(tmp_path), views=TINY, max_skip_rate=0.25)
    stream = build_view_stream(cfg, pass_epochs=1)
    with pytest.raises(DataQualityError) as info:
        epoch_views(stream, cfg, batch_size=2)
    message = str(info.value)
    assert "4 of 8 samples (50.0%)" in message and "data.max_skip_rate=25.0%" in message
    for reason in ("empty: 1", "not_an_image: 1", "truncated: 1", "too_large: 1"):
        assert reason in message


def test_only_bad_files_says_no_usable_images(ray_cluster, tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_text("text")
    cfg = DataConfig(source="folder", path=str(tmp_path), views=TINY, max_skip_rate=1.0)
    stream = build_view_stream(cfg, pass_epochs=1)
    with pytest.raises(DataQualityError, match=r"No usable images .* all 2 samples were skipped"):
        epoch_views(stream, cfg, batch_size=1)


def test_two_training_workers_stream_their_shards_without_deadlock(ray_cluster, tmp_path):
    """The 2-core case of the issue: 2 one-CPU TorchTrainer workers plus Ray Data actors."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    expected = make_image_folder(tmp_path / "images", per_class=12)  # 24 good, 4 bad
    cfg = DataConfig(source="folder", path=str(tmp_path / "images"), views=TINY, max_skip_rate=0.2)
    stream = build_view_stream(cfg, pass_epochs=1)
    results = tmp_path / "results"
    results.mkdir()

    def loop(config: dict) -> None:
        import ray.train

        from lejepa_ray.data.feed import iter_epoch
        from lejepa_ray.data.stream import skip_metrics

        rank = ray.train.get_context().get_world_rank()
        epochs = []
        for _ in range(2):
            ids, seen_epochs, shapes = [], set(), set()
            for batch in iter_epoch(config["counter"], config["cfg"], batch_size=4, device="cpu"):
                ids += batch["sample_id"].tolist()
                seen_epochs |= set(batch["epoch"].tolist())
                shapes.add(
                    (
                        tuple(batch["global"].shape),
                        str(batch["global"].dtype),
                        tuple(batch["local"].shape),
                        str(batch["local"].dtype),
                    )
                )
            epochs.append({"ids": ids, "epochs": sorted(seen_epochs), "shapes": sorted(shapes)})
        out = {"epochs": epochs, "metrics": skip_metrics(config["counter"])}
        (config["results"] / f"rank{rank}.json").write_text(json.dumps(out))

    trainer = TorchTrainer(
        loop,
        train_loop_config={"counter": stream.counter, "cfg": cfg, "results": results},
        datasets={"train": stream.dataset},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(tmp_path / "runs"), name="stream"),
    )
    result = trainer.fit()
    assert result.error is None
    ranks = [json.loads((results / f"rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in (0, 1):
        per_rank = [r["epochs"][epoch] for r in ranks]
        assert [len(r["ids"]) for r in per_rank] == [12, 12]  # equal shards, full batches
        assert all(r["epochs"] == [epoch] for r in per_rank)
        assert all(
            r["shapes"] == [[[4, 2, 3, 32, 32], "torch.uint8", [4, 3, 3, 16, 16], "torch.uint8"]]
            for r in per_rank
        )
        assert len(set(per_rank[0]["ids"]) | set(per_rank[1]["ids"])) == expected["good"]
    assert ranks[0]["epochs"][0]["ids"] != ranks[0]["epochs"][1]["ids"]  # reshuffled
    metrics = ranks[0]["metrics"]
    assert metrics["data/seen"] == 2 * 28 and metrics["data/skipped"] == 2 * 4
    assert {k: v for k, v in metrics.items() if k.startswith("data/skipped/")} == {
        f"data/skipped/{reason}": 2.0 * n for reason, n in expected["bad"].items()
    }


def test_converted_parquet_streams_the_same_views_as_its_folder(ray_cluster, tmp_path):
    from lejepa_ray.data.convert import convert_image_folder

    expected = make_image_folder(tmp_path / "images", per_class=6)
    convert_image_folder(str(tmp_path / "images"), str(tmp_path / "pq"), shard_size_mb=0.01)
    base = {"views": TINY, "max_skip_rate": 0.5}
    folder = DataConfig(source="folder", path=str(tmp_path / "images"), **base)
    parquet = DataConfig(source="parquet", path=str(tmp_path / "pq"), shuffle="full", **base)
    from_folder = epoch_views(build_view_stream(folder, pass_epochs=1), folder, batch_size=1)
    from_parquet = epoch_views(build_view_stream(parquet, pass_epochs=1), parquet, batch_size=1)
    assert len(from_parquet) == len(from_folder) == expected["good"]
    # Same keys (paths below the root), same seed and epoch: the very same crops.
    assert from_parquet.keys() == from_folder.keys()
    assert all(np.array_equal(from_parquet[k][1], from_folder[k][1]) for k in from_folder)
    # Ray's DataSourceV2 parquet reader would start FooterReader actors at every epoch.
    from ray.util.state import list_actors

    assert not list_actors(filters=[("class_name", "=", "FooterReader")])


def test_a_split_streams_the_samples_local_source_reads(ray_cluster, tmp_path):
    from dataclasses import replace

    from lejepa_ray.data.convert import convert_image_folder
    from lejepa_ray.data.keys import stable_hash
    from lejepa_ray.data.sources import LocalSource

    make_image_folder(tmp_path / "images", per_class=15, bad=False)
    convert_image_folder(str(tmp_path / "images"), str(tmp_path / "pq"))
    for cfg in (
        DataConfig(source="digits", image_size=16, views=TINY, split="val", num_samples=60),
        DataConfig(source="parquet", path=str(tmp_path / "pq"), views=TINY, split="train"),
    ):
        local = LocalSource(cfg)
        expected = {stable_hash(local[i]["key"]) for i in range(len(local))}
        assert (
            set(epoch_views(build_view_stream(cfg, pass_epochs=1), cfg, batch_size=1)) == expected
        )
        assert len(LocalSource(replace(cfg, split="all", num_samples=None))) > len(expected)


def test_device_augmentation_ships_crops_and_parameters_for_the_trainer(ray_cluster):
    from dataclasses import replace

    from lejepa_ray.data.device_views import augment_batch
    from lejepa_ray.data.views import PARAM_FIELDS

    cfg = DataConfig(source="synthetic", num_samples=16, image_size=48, views=TINY, seed=3)
    on_device = replace(cfg, augment_on="device")
    cpu = epoch_views(build_view_stream(cfg, pass_epochs=1), cfg)
    views, params = {}, set()
    stream = build_view_stream(on_device, pass_epochs=1)
    for batch in iter_views(stream.dataset, stream.counter, on_device, 4, device="cpu"):
        assert (
            batch["global"].dtype == torch.uint8 and batch["global_params"].dtype == torch.float32
        )
        assert batch["global_params"].shape == (4, 2, len(PARAM_FIELDS))
        assert batch["local_params"].shape == (4, 3, len(PARAM_FIELDS))
        params.add(batch["global_params"].sum().item())
        out = augment_batch(batch, on_device.views)
        for i, sid in enumerate(batch["sample_id"].tolist()):
            views[sid] = out["global"][i].numpy()
    assert views.keys() == cpu.keys() and len(params) > 1
    # The same draws, applied on the trainer: the CPU path's views within rounding.
    diffs = [np.abs(views[s] - cpu[s][1].astype(np.float32)).mean() for s in cpu]
    assert max(diffs) < 3.0, diffs


@pytest.mark.parametrize("prefetch", [0, 2])
def test_epoch_cursor_counts_on_from_the_saved_position_and_meets_each_new_pass(
    monkeypatch, prefetch
):
    from lejepa_ray.data import feed

    def fake_passes():  # what the pipeline yields: 3 batches a pass (one epoch), from epoch 4
        epoch = 4
        while True:
            yield [{"epoch": torch.full((2,), epoch), "i": torch.tensor([i])} for i in range(3)]
            epoch += 1

    passes = fake_passes()
    monkeypatch.setattr(feed, "iter_epoch", lambda *a, **k: iter(next(passes)))
    # Saved 8 samples into epoch 4 (of 24 rows) with 2 ranks of batch 2: the pipeline starts
    # there (it skips what came before), so the cursor drops nothing and counts on.
    cursor = feed.EpochCursor(
        None, None, 2, 2, rows_per_epoch=24, epoch=4, samples=8, prefetch=prefetch
    )
    it = iter(cursor)
    first = next(it)
    assert (int(first["epoch"][0]), int(first["i"])) == (4, 0)
    assert (cursor.epoch, cursor.samples) == (4, 12)
    next(it), next(it)
    assert (cursor.epoch, cursor.samples) == (4, 20)  # 4 rows the pass never delivered
    nxt = next(it)  # the next pass starts epoch 5 from its beginning
    assert (int(nxt["epoch"][0]), int(nxt["i"])) == (5, 0)
    assert (cursor.epoch, cursor.samples) == (5, 4)


def test_the_position_crosses_epochs_inside_a_pass_the_same_on_every_rank(monkeypatch):
    from lejepa_ray.data import feed

    drawn = [{"epoch": torch.zeros(3), "i": torch.arange(3) + 3 * b} for b in range(8)]
    monkeypatch.setattr(feed, "iter_epoch", lambda *a, **k: iter(drawn))
    # A pass of 2 epochs of 15 rows; 2 ranks drawing 3 rows a step (6 rows).
    cursor = feed.EpochCursor(None, None, 3, 2, rows_per_epoch=15, epochs_per_pass=2)
    positions = [(cursor.epoch, cursor.samples) for _ in zip(range(5), cursor, strict=False)]
    assert positions == [(0, 6), (0, 12), (1, 3), (1, 9), (1, 15)]  # (1, 15): epoch 1 done


def test_a_cursor_resumed_at_an_epoch_end_meets_the_passes_after_it(monkeypatch):
    from lejepa_ray.data import feed

    asked = []

    def fake_pass(*args, resumed=False, **kwargs):
        asked.append(resumed)
        return iter([{"epoch": torch.zeros(2)} for _ in range(2)])

    monkeypatch.setattr(feed, "iter_epoch", fake_pass)
    # Saved at the end of epoch 1 (6 of 6 rows), passes of 2 epochs: the pipeline resumes at
    # epoch 2, the start of pass 1, so the pass after it starts epoch 4.
    cursor = feed.EpochCursor(
        None, None, 2, 1, rows_per_epoch=6, epochs_per_pass=2, epoch=1, samples=6
    )
    it = iter(cursor)
    positions = [next(it) and (cursor.epoch, cursor.samples) for _ in range(3)]
    assert positions == [(2, 2), (2, 4), (4, 2)]
    assert asked == [False, False]  # pass 1 starts whole: its end is checked as any pass's
    # A pass resumed mid-way may end before a batch; only the first one is told so.
    resumed = feed.EpochCursor(None, None, 2, 1, rows_per_epoch=6, samples=4)
    it = iter(resumed)
    next(it), next(it), next(it)
    assert asked[-2:] == [True, False]


def test_a_rank_with_the_smaller_share_draws_the_larger_one_and_trains_on_its_own(monkeypatch):
    from lejepa_ray.data import feed

    # A global batch of 5 over 2 ranks (3 and 2 images): both draw 3 rows, so their equal
    # shards end on the same step; this one (rank 1) trains on 2 of them.
    drawn = [{"epoch": torch.full((3,), 0), "i": torch.arange(3) + 3 * b} for b in range(4)]
    monkeypatch.setattr(feed, "iter_epoch", lambda *a, **k: iter(drawn))
    cursor = feed.EpochCursor(None, None, 3, 2, rows_per_epoch=100, samples=12, keep=2)
    batch = next(iter(cursor))
    assert batch["i"].tolist() == [0, 1] and batch["epoch"].shape == (2,)
    assert cursor.samples == 18  # the position in the stream: rows drawn, the left-out too


def test_prefetching_asks_for_the_next_epoch_before_the_trainer_ends_this_one(monkeypatch):
    import threading

    from lejepa_ray.data import feed

    asked = []  # batches the trainer had taken when each epoch was asked for
    taken = 0
    second = threading.Event()

    def fake_epoch(*args, **kwargs):
        asked.append(taken)
        if len(asked) == 2:
            second.set()
        epoch = len(asked) - 1
        return iter([{"epoch": torch.full((2,), epoch)} for _ in range(3)])

    monkeypatch.setattr(feed, "iter_epoch", fake_epoch)
    cursor = feed.EpochCursor(None, None, 2, 1, rows_per_epoch=6, prefetch=4)
    it = iter(cursor)
    next(it)
    taken = 1
    # Epoch 1 is asked for while the trainer is still on epoch 0's first of 3 batches.
    assert second.wait(10) and asked[1] <= 1
    epochs = [int(next(it)["epoch"][0]) for _ in range(4)]
    assert epochs == [0, 0, 1, 1] and cursor.epoch == 1 and cursor.samples == 4
    assert [e for e, _ in cursor.boundary_waits] == [1]  # entering epoch 1, not epoch 0


def test_a_prefetched_error_reaches_the_trainer_where_it_happened(monkeypatch):
    from lejepa_ray.data import feed, stream

    def failing_epoch(*args, **kwargs):
        yield {"epoch": torch.zeros(2)}
        raise stream.DataQualityError("too many bad samples")

    monkeypatch.setattr(feed, "iter_epoch", failing_epoch)
    it = iter(feed.EpochCursor(None, None, 2, 1, rows_per_epoch=6, prefetch=4))
    next(it)
    with pytest.raises(stream.DataQualityError, match="too many bad samples"):
        next(it)
