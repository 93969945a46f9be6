"""lejepa_ray.storage and everything that reads or writes through it, against a real S3
endpoint (moto's server on the loopback interface, see ``tests/s3.py``)."""

from __future__ import annotations

import json

import pytest
import torch
from checkpoint_helpers import _batch, _config, _load, _save, _trainer

from lejepa_ray import runs, storage
from lejepa_ray.model.encoder import LeJEPAEncoder, resolve_backbone
from lejepa_ray.storage import Folder
from lejepa_ray.train import checkpoint, checkpoint_read
from lejepa_ray.train.checkpoint import CheckpointError

TINY_MODEL = "model.name=test_resnet"  # timm's 0.4M-parameter test model: a 5 MB checkpoint


def _encoder() -> LeJEPAEncoder:
    cfg = _config(TINY_MODEL)
    return LeJEPAEncoder(resolve_backbone(cfg), cfg.model)


def test_folder_lists_reads_ranges_and_counts_bytes_on_s3(s3_server):
    folder = Folder.at(s3_server.uri("unit", "folder"))
    assert folder.uri == s3_server.uri("unit", "folder") and not folder.is_dir()
    folder.write("a/b.bin", bytes(range(256)))
    folder.write("c.txt", b"hello")
    assert folder.files() == {"a/b.bin": 256, "c.txt": 5}
    with folder.open("a/b.bin") as f:
        assert folder.read_at(f, 10, 4) == bytes([10, 11, 12, 13])
    assert folder.read("c.txt") == b"hello" and folder.read("nope") is None
    assert folder.bytes_read == 4 + 5
    assert storage.read_text(s3_server.uri("unit", "folder", "c.txt")) == "hello"


def test_uri_of_gives_back_the_scheme_ray_drops(s3_server):
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(s3_server.uri("runs", "r"))
    assert path == "lejepa-test/runs/r"
    assert storage.uri_of(filesystem, path) == s3_server.uri("runs", "r")
    assert storage.uri_of(fs.LocalFileSystem(), "/tmp/x") == "/tmp/x"


@pytest.fixture
def s3_checkpoint(s3_server, tmp_path, request):
    """A one-process checkpoint uploaded to S3, and the trainer that wrote it."""
    trainer = _trainer(TINY_MODEL)
    trainer.train_step([_batch(0)])
    _save(trainer, tmp_path / "ckpt")
    uri = s3_server.uri("ckpts", request.node.name, "checkpoint_00000001")
    storage.upload(str(tmp_path / "ckpt"), uri)
    return uri, trainer


def test_a_checkpoint_on_s3_loads_in_place_reading_only_what_it_needs(s3_checkpoint):
    uri, saved = s3_checkpoint
    stats = {}
    resumed = _trainer(TINY_MODEL, "seed=7")
    state = _load(uri, resumed, stats=stats)
    assert state.step == 1
    for a, b in zip(saved.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    # Everything but the optimizer's hyperparameters is needed to resume: the whole checkpoint
    # less the small files not read (config.yaml).
    assert 0.99 * stats["bytes_total"] < stats["bytes_read"] <= stats["bytes_total"]
    # The probe and exports read the model's tensors only: AdamW's two moments stay unread.
    folder = Folder.at(uri)
    checkpoint.load_model_weights(folder, _encoder())
    print(f"model only: {folder.bytes_read} of {stats['bytes_total']} bytes")
    assert folder.bytes_read < 0.4 * stats["bytes_total"]


def test_a_flipped_byte_on_s3_is_refused_by_name(s3_checkpoint, s3_server):
    uri, _ = s3_checkpoint
    index = checkpoint_read.read_metadata(uri).storage_data
    item = next(i for k, i in index.items() if k.fqn.startswith("model.") and i.length > 4096)
    folder = Folder.at(uri)
    data = bytearray(folder.read(item.relative_path))
    data[item.offset + item.length // 2] ^= 0x80
    folder.write(item.relative_path, bytes(data))
    with pytest.raises(CheckpointError, match=rf"{item.relative_path} bytes {item.offset}\+"):
        checkpoint.load_model_weights(uri, _encoder())


def test_refused_checkpoints_are_passed_over(s3_checkpoint):
    uri, _ = s3_checkpoint
    checkpoint_read.refuse(uri, "a test said so")
    with pytest.raises(CheckpointError, match=r"was refused earlier: a test said so"):
        checkpoint.read_state(uri)
    assert json.loads(Folder.at(uri).read("refused.json"))["reason"] == "a test said so"


def _s3_shards(s3_server, tmp_path) -> str:
    """512 generated photos in two classes, converted to parquet and uploaded: a dataset of
    8 global batches on S3."""
    from images import photo

    from lejepa_ray.data.convert import convert_image_folder

    for c, name in enumerate(("cat", "dog")):
        (tmp_path / "src" / name).mkdir(parents=True)
        for i in range(256):
            (tmp_path / "src" / name / f"{i:03d}.jpg").write_bytes(photo(64, 48, 1000 * c + i))
    uri = s3_server.uri("datasets", "photos")
    convert_image_folder(str(tmp_path / "src"), uri)  # straight into the bucket
    return uri


def _s3_config(s3_server, data: str, *overrides: str):
    from procs import TINY

    from lejepa_ray.config import QUICKSTART, load_config

    return load_config(
        QUICKSTART,
        [
            *TINY,
            "name=s3run",
            f"storage_path={s3_server.uri('runs')}",
            "data.source=parquet",
            f"data.path={data}",
            "data.num_samples=null",
            "logging.every_steps=1",
            "probe.knn=false",
            "logging.rankme_samples=0",
            *overrides,
        ],
    )


@pytest.mark.slow
def test_a_run_on_s3_resumes_when_rerun_falls_back_and_exports(
    ray_cluster, s3_server, tmp_path, capsys
):
    """Reads its data from S3 and writes its run there; resumed when the same command is run
    again, past a corrupt checkpoint (killed workers resuming from S3: the three-kill test in
    test_pretrain)."""
    from lejepa_ray.cli import main
    from lejepa_ray.launch.driver import run

    data_uri = _s3_shards(s3_server, tmp_path)
    run_uri = s3_server.uri("runs", "s3run")
    first = run(_s3_config(s3_server, data_uri, "optim.steps=8"))
    assert first.resumed_from is None
    assert first.checkpoint == f"{run_uri}/checkpoint_00000008"
    assert first.metrics["step"] == 8
    files = Folder.at(run_uri).files()
    assert "config.yaml" in files and any(f.startswith("tensorboard/events.") for f in files)
    for step in (4, 8):
        assert f"checkpoint_{step:08d}/manifest.json" in files

    # A byte flipped in the latest checkpoint's payload is only seen when a rank reads it.
    ckpt8 = Folder.at(f"{run_uri}/checkpoint_00000008")
    index = checkpoint_read.read_metadata(ckpt8).storage_data
    item = next(i for k, i in index.items() if k.fqn.startswith("model.") and i.length > 4096)
    data = bytearray(ckpt8.read(item.relative_path))
    data[item.offset + item.length // 2] ^= 0x01
    ckpt8.write(item.relative_path, bytes(data))

    # The same command with more steps resumes from S3 (this failed before: the checkpoint's
    # URI lost its scheme and was read as a local path). The driver picks checkpoint 8; the
    # workers refuse it as they read it, the attempt restarts from checkpoint 4, and the run
    # completes.
    second = run(_s3_config(s3_server, data_uri, "optim.steps=12"))
    assert second.metrics["step"] == 12
    assert second.resumed_from == 4  # what the workers loaded, not the driver's first pick
    local_tb = tmp_path / "tensorboard"
    local_tb.mkdir()
    storage.download(f"{run_uri}/tensorboard", str(local_tb))
    from pretrain_helpers import _scalars

    scalars = _scalars(str(tmp_path))
    assert [s for s, _ in scalars["loss"]] == list(range(1, 13))  # every step once
    assert [s for s, _ in scalars["resume/load_s"]] == [4]
    read = {t: v for t, v in scalars.items() if t.startswith("resume/bytes")}
    with capsys.disabled():
        print({t: [(s, int(v)) for s, v in values] for t, values in read.items()})
    total = dict(read["resume/bytes_total"])[4]
    for rank in (0, 1):  # DDP: each rank holds the whole model and optimizer, so reads it all
        assert 0.9 * total < dict(read[f"resume/bytes_read/rank_{rank}"])[4] <= total
    # Step 8 was trained and saved again, under a name of its own, which Ray keeps when it
    # retires the refused checkpoint.
    kept = [f.name() for f, _ in runs.registered(run_uri)]
    assert kept == ["checkpoint_00000012", "checkpoint_00000008_1"], kept
    assert checkpoint.read_state(f"{run_uri}/checkpoint_00000008_1").step == 8

    # Export and eval read the run where it is.
    assert main(["export", run_uri, str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert main(["export", run_uri, s3_server.uri("exports", "s3run")]) == 0
    assert "model.safetensors" in Folder.at(s3_server.uri("exports", "s3run")).files()
    assert main(["eval", run_uri, "--data", data_uri, "--probe", "knn"]) == 0
    assert "checkpoint_00000012" in capsys.readouterr().out


@pytest.mark.slow
def test_a_sweep_on_s3_stores_trials_and_results_there_and_exports_its_winner(
    ray_cluster, s3_server, tmp_path
):
    from procs import TINY

    from lejepa_ray.config import QUICKSTART
    from lejepa_ray.tune.options import SweepOptions
    from lejepa_ray.tune.sweep import run_sweep

    space = tmp_path / "space.yaml"
    space.write_text("loss.lam:\n  choice: [0.02, 0.2]\n")
    result = run_sweep(
        SweepOptions(
            space=str(space),
            config=QUICKSTART,
            name="s3sweep",
            samples=1,  # what lands where is the point here; ranking many is test_sweep's
            scheduler="fifo",
            overrides=[*TINY, "probe.knn=false", f"storage_path={s3_server.uri('sweeps')}"],
        ),
        print_fn=lambda *_: None,
    )
    sweep = s3_server.uri("sweeps", "s3sweep")
    assert result.sweep_dir == sweep and result.winner_dir == f"{sweep}/winner"
    files = Folder.at(sweep).files()
    for name in ("sweep.json", "results.csv", "plot.png", "winner/config.json"):
        assert name in files, sorted(files)
    assert "winner/model.safetensors" in files
    for row in result.rows:
        assert row.checkpoint.startswith(f"{sweep}/runs/{row.trial}/checkpoint_"), row.checkpoint
        assert f"runs/{row.trial}/checkpoint_00000008/manifest.json" in files
